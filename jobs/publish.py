"""Entry point of the `publish` stage (no JVM).

    python jobs/publish.py --date YYYY-MM-DD [--conf X] [--set k=v]       # gate, write, verify, switch
    python jobs/publish.py --date YYYY-MM-DD --set publish.force=true     # publish despite the gate
    python jobs/publish.py --rollback-to YYYY-MM-DD [--conf X]            # point CURRENT at that release
"""

import sys

from recsys_batch.runner import job_main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--rollback-to" in argv:
        from datetime import date

        from recsys_batch.config import load_config
        from recsys_batch.errors import RecsysBatchError
        from recsys_batch.publish.release import rollback

        conf = argv[argv.index("--conf") + 1] if "--conf" in argv else None
        overrides = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
        try:
            print(rollback(load_config(conf, overrides), date.fromisoformat(argv[argv.index("--rollback-to") + 1])))
        except RecsysBatchError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        sys.exit(0)
    sys.exit(job_main("publish"))
