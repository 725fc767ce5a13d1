"""spark-submit entry point of the `usercf` stage: `spark-submit jobs/usercf.py --date YYYY-MM-DD [--conf cluster] [--set k=v]`."""

import sys

from recsys_batch.runner import job_main

if __name__ == "__main__":
    sys.exit(job_main("usercf"))
