"""spark-submit entry point of the `samples` stage: `spark-submit jobs/samples.py --date YYYY-MM-DD [--conf cluster] [--set k=v]`."""

import sys

from recsys_batch.runner import job_main

if __name__ == "__main__":
    sys.exit(job_main("samples"))
