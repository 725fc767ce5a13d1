"""Entry point of the `index` stage (no JVM): `python jobs/index.py --date YYYY-MM-DD [--conf X] [--set k=v]`."""

import sys

from recsys_batch.runner import job_main

if __name__ == "__main__":
    sys.exit(job_main("index"))
