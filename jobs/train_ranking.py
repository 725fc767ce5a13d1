"""Entry point of the `train_ranking` stage (no JVM): `python jobs/train_ranking.py --date YYYY-MM-DD [--conf X] [--set k=v]`.

Under DDP, one process per rank: `torchrun --nproc_per_node 2 jobs/train_ranking.py --date D` (the two-tower's
path, docs/training.md); rank 0 checks upstream, writes the run record, evaluates, writes the model folder.
"""

import os
import sys

from recsys_batch.runner import ddp_job_main, job_main

if __name__ == "__main__":
    launched_by_torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1
    sys.exit(ddp_job_main("train_ranking") if launched_by_torchrun else job_main("train_ranking"))
