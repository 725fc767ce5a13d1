"""Entry point of the `train` stage (no JVM): `python jobs/train_two_tower.py --date YYYY-MM-DD [--conf X] [--set k=v]`.

Under DDP: `torchrun --nproc_per_node 2 jobs/train_two_tower.py --date D` (see docs/training.md).
"""

import os
import sys

from recsys_batch.runner import job_main

if __name__ == "__main__":
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # launched by torchrun
        import torch.distributed as dist

        dist.init_process_group("gloo" if not __import__("torch").cuda.is_available() else "nccl")
        try:
            if dist.get_rank() != 0:  # only rank 0 writes run records, checkpoints and exports
                from datetime import date

                from recsys_batch.config import load_config
                from recsys_batch.training.train import run_train

                args = sys.argv[1:]
                d = args[args.index("--date") + 1]
                overrides = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
                conf = args[args.index("--conf") + 1] if "--conf" in args else None
                run_train(load_config(conf, overrides), date.fromisoformat(d))
                sys.exit(0)
            sys.exit(job_main("train"))
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
    sys.exit(job_main("train"))
