"""Entry point of the `report` stage (no JVM): `python jobs/report.py --date YYYY-MM-DD [--conf X] [--set k=v]`."""

import sys

from recsys_batch.runner import job_main

if __name__ == "__main__":
    sys.exit(job_main("report"))
