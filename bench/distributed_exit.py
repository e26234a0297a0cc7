"""How often a two-process training run ends cleanly: the run tests/test_distributed.py's
fixture stops at step 3 (`torchrun --standalone --nproc-per-node 2 -m mann train ...`), repeated,
counting the runs whose exit code is not 0 and why. A rank that aborts at exit after its
checkpoint is saved ("terminate called without an active exception") fails the run all the
same.

    python bench/distributed_exit.py                       # this tree, 12 runs
    python bench/distributed_exit.py --repo ../other --runs 24
    MANN_BACKEND=reference python bench/distributed_exit.py
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLAGS = [
    "train", "--arch", "ntm", "--hidden-size", "12", "--memory-size", "8", "--word-size", "5",
    "--task", "copy", "--task-option", "bits=3", "--min-length", "1", "--max-length", "6",
    "--batch-size", "4", "--seed", "5", "--lr", "0.01", "--curriculum-start", "1",
    "--curriculum-increment", "1", "--curriculum-threshold", "1e9", "--curriculum-window", "2",
    "--log-every", "1", "--checkpoint-every", "3", "--quiet", "--steps", "3",
]  # fmt: skip


def one_run(repo: Path, out: Path) -> str:
    """"ok", or the first telling line of a failed run's output."""
    environment = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(repo))
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "mann", "--threads", "1", *FLAGS, "--out", str(out)],
        capture_output=True, text=True, timeout=300, env=environment, cwd=repo,
    )  # fmt: skip
    if done.returncode == 0:
        return "ok"
    for line in done.stderr.splitlines():
        if "terminate called" in line or "Error" in line:
            return line.strip()
    return f"exit code {done.returncode}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=ROOT, help="the tree to run (default: this)")
    parser.add_argument("--runs", type=int, default=12)
    args = parser.parse_args()
    outcomes: Counter[str] = Counter()
    with tempfile.TemporaryDirectory(prefix="mann-exit-") as directory:
        for index in range(args.runs):
            outcomes[one_run(args.repo.resolve(), Path(directory) / f"run{index}")] += 1
    backend = os.environ.get("MANN_BACKEND", "auto")
    print(f"\n{args.runs} two-process 3-step runs of {args.repo.resolve()}, backend {backend}\n")
    print("| outcome | runs |")
    print("|---|---:|")
    for outcome, count in outcomes.most_common():
        print(f"| {outcome} | {count} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
