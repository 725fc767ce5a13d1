"""Entry point of the `check_input` stage (no JVM): `python jobs/check_input.py --date YYYY-MM-DD [--conf X]`."""

import sys

from recsys_batch.runner import job_main

if __name__ == "__main__":
    sys.exit(job_main("check_input"))
