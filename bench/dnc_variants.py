"""The DNC against its improved variants (Csordás & Schmidhuber 2019), trained alike.

    python bench/dnc_variants.py                                   # the full table (hours)
    python bench/dnc_variants.py --tasks associative_recall --seeds 1 --steps 1500
    python bench/dnc_variants.py --jobs 2                          # two runs at a time
    python bench/dnc_variants.py --out runs/variants               # keep runs; resume

Variants: plain, each improvement alone (masked content, de-allocation, link sharpness), and
all three. Tasks: associative recall (2-6 items) and repeat copy over lengths 1-5 with 1-5
repeats (``repeat_copy_short``; ``--tasks repeat_copy`` for lengths and repeats 1-10),
each trained with the same recipe (DNC 64×20, LSTM 100, one read head, batch 16, Adam at
lr 3e-3 with cosine decay, the length curriculum) for ``--steps`` steps per seed, one thread
per run. Improved variants train by the reference (pure torch), the plain DNC by its fused
kernels: the wall-clock column compares implementations as well as variants.

For each run: the step at which the training batches' bit errors per sequence (mean of 20
logged windows) first fell below 0.5 over the task's full range ("steps to solve", "-" if
never), the final bit errors per sequence over 500 fresh sequences of the longest training
length, and the training's seconds. Prints one row per variant and task (median over seeds,
and each seed).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {
    "plain": [],
    "masked content": ["--masked-content"],
    "de-allocation": ["--deallocation"],
    "link sharpness": ["--link-sharpness"],
    "all three": ["--masked-content", "--deallocation", "--link-sharpness"],
}
TASKS = {
    "associative_recall": (["--task", "associative_recall"], 6),
    # Lengths 1-5, 1-5 repeats: the plain DNC learns it in a few thousand steps, where the
    # full range (below) takes about 10,000, too long for 15 runs of the reference.
    "repeat_copy_short": (["--task", "repeat_copy", "--max-length", "5",
                           "--task-option", "max_repeats=5"], 5),  # fmt: skip
    "repeat_copy": (["--task", "repeat_copy"], 10),
}
DEFAULT_TASKS = ("associative_recall", "repeat_copy_short")
SOLVED = 0.5


def finished_metadata(out: Path, steps: int) -> dict | None:
    """The metadata of a run at ``out`` that went all ``steps``, else None (``--out`` keeps
    runs, so an interrupted table resumes where it stopped)."""
    try:
        metadata = json.loads(Path(f"{out}.json").read_text())
    except FileNotFoundError:
        return None
    done = metadata["train_config"]["steps"] == steps and metadata["metrics"]["step"] == steps
    return metadata if done else None


def run(task: str, variant: str, seed: int, steps: int, directory: Path) -> dict:
    task_flags, longest = TASKS[task]
    out = directory / f"{task}-{variant.replace(' ', '-')}-{seed}"
    command = [
        sys.executable, "-m", "mann", "--threads", "1", "train", "--arch", "dnc", *task_flags,
        "--memory-size", "64", "--word-size", "20", "--hidden-size", "100",
        "--steps", str(steps), "--lr", "0.003", "--lr-decay", "cosine", "--seed", str(seed),
        "--checkpoint-every", str(steps), "--quiet", "--out", str(out), *VARIANTS[variant],
    ]  # fmt: skip
    metadata = finished_metadata(out, steps)
    if metadata is None:
        subprocess.run(command, check=True, cwd=ROOT, capture_output=True)
        metadata = finished_metadata(out, steps)
    seconds = metadata["metrics"]["seconds"]
    solved = None
    with open(f"{out}.csv") as handle:
        rows = list(csv.DictReader(handle))
    window = []
    final_length = max(int(row["max_length"]) for row in rows)
    for row in rows:
        window = (window + [float(row["bit_errors"])])[-20:]
        full_range = int(row["max_length"]) == final_length
        if solved is None and full_range and len(window) == 20 and \
                statistics.mean(window) < SOLVED:  # fmt: skip
            solved = int(row["step"])
    evaluated = subprocess.run(
        [sys.executable, "-m", "mann", "--threads", "1", "evaluate", str(out), "--lengths",
         str(longest), "--sequences", "500", "--seed", "12345"],
        check=True, cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    last = [line for line in evaluated.stdout.splitlines() if line.startswith(f"| {longest} |")]
    errors = float(last[0].split("|")[3])
    return {"task": task, "variant": variant, "seed": seed, "solved": solved,
            "errors": errors, "seconds": seconds}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default=",".join(DEFAULT_TASKS),
                        help=f"comma-separated, of {', '.join(TASKS)}")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (one thread each)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="keep the runs here; runs already finished there are not redone")
    args = parser.parse_args()
    tasks = [task for task in args.tasks.split(",") if task]
    variants = [variant for variant in args.variants.split(",") if variant]
    unknown = sorted(set(tasks) - set(TASKS)) + sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown tasks or variants {unknown}; tasks: {list(TASKS)}, variants: "
                     f"{list(VARIANTS)}")  # fmt: skip
    jobs = [(task, variant, seed) for task in tasks for variant in variants
            for seed in range(1, args.seeds + 1)]  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch, ThreadPoolExecutor(args.jobs) as pool:
        directory = args.out or Path(scratch)
        directory.mkdir(parents=True, exist_ok=True)
        results = list(pool.map(lambda job: run(*job, args.steps, directory), jobs))
    print(f"DNC 64×20, LSTM 100, {args.steps} steps, seeds 1-{args.seeds}, "
          f"final errors over 500 sequences of the longest length\n")
    print("| task | variant | steps to solve (median) | final bit errors (median) | per seed "
          "(steps to solve / final errors) | s per run |")
    print("|---|---|---:|---:|---|---:|")
    for task in tasks:
        for variant in variants:
            rows = [r for r in results if r["task"] == task and r["variant"] == variant]
            solved = [r["solved"] for r in rows if r["solved"] is not None]
            median_solved = (f"{statistics.median(solved):.0f}" if len(solved) * 2 > len(rows)
                             else "-")  # fmt: skip
            seeds = ", ".join(f"{r['solved'] if r['solved'] is not None else '-'} / "
                              f"{r['errors']:.3f}" for r in rows)  # fmt: skip
            print(f"| {task} | {variant} | {median_solved} | "
                  f"{statistics.median(r['errors'] for r in rows):.3f} | {seeds} | "
                  f"{statistics.median(r['seconds'] for r in rows):.0f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
