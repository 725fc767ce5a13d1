"""spark-submit entry point of the `latent` stage: `spark-submit jobs/latent.py --date YYYY-MM-DD [--conf cluster] [--set k=v]`."""

import sys

from recsys_batch.runner import job_main

if __name__ == "__main__":
    sys.exit(job_main("latent"))
