"""Run several mergekit configs in one process (run by the mergekit venv's python).

    MERGEKIT_PYTHON mergekit_runner.py JOBS.json

JOBS.json is a list of ``{"config": PATH, "out": PATH, "seed": INT|null}``; relative paths
(inside the configs too) are taken from the current directory. Each job does what
``mergekit-yaml CONFIG OUT --no-copy-tokenizer --no-write-model-card --quiet
[--random-seed SEED]`` does, without paying mergekit's import time (several seconds) once
per config. A JSON line ``{"config": ..., "ok": bool, "error": str}`` is printed per job;
the exit status is 0 when every job succeeded.

This file runs in mergekit's environment only: it must not import mergec.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main(argv: list[str]) -> int:
    import yaml
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    with open(argv[1], encoding="utf-8") as f:
        jobs = json.load(f)
    failed = 0
    for job in jobs:
        try:
            options = MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True,
                                   random_seed=job.get("seed"))
            options.apply_global_options()
            with open(job["config"], encoding="utf-8") as f:
                source = f.read()
            config = MergeConfiguration.model_validate(yaml.safe_load(source))
            run_merge(config, job["out"], options=options, config_source=source)
            print(json.dumps({"config": job["config"], "ok": True}), flush=True)
        except Exception:  # report every failing config, not only the first
            failed += 1
            print(json.dumps({"config": job["config"], "ok": False,
                              "error": traceback.format_exc()}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
