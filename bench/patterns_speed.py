"""How long the allocation-pattern metrics take: what the Patterns page and
``python -m mann patterns`` wait for.

    python bench/patterns_speed.py [--repeats 5] [--episodes 100] [--rounds 6] [--length 5]
                                   [--checkpoints DIR]

For ntm-multi-copy and dnc-multi-copy (the shipped checkpoints by default), each repeat
records ``--episodes`` multi-copy episodes with both models (``mann.patterns.collect_traces``:
one forward pass per batch of 100 and model) and computes their metrics table
(``mann.analysis.metrics_frame``). Prints the median and the fastest of the repeats for each
part and in all; the first repeat, which pays for imports and numba's kernel load, is
printed apart. Target (issue 17): two models over 100 episodes of 6 rounds of 5 within 2 s.
Run it alone on the machine: another busy process slows it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import mann  # noqa: E402
from mann.analysis import metrics_frame  # noqa: E402
from mann.patterns import collect_traces  # noqa: E402
from mann.tasks import make_task  # noqa: E402

TARGET_SECONDS = 2.0
MODELS = ("ntm-multi-copy", "dnc-multi-copy")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--length", type=int, default=5)
    parser.add_argument("--checkpoints", default=str(Path(__file__).resolve().parent.parent
                                                     / "checkpoints"))  # fmt: skip
    args = parser.parse_args()
    models = {name: mann.load(Path(args.checkpoints) / name) for name in MODELS}
    task = make_task("multi_copy").with_lengths(args.length, args.length)
    task = task.with_rounds(args.rounds, args.rounds)

    timings = []
    for _ in range(args.repeats + 1):
        started = time.perf_counter()
        traces = collect_traces(models, task, args.episodes, seed=0)
        recorded = time.perf_counter()
        metrics_frame(traces)
        done = time.perf_counter()
        timings.append((recorded - started, done - recorded, done - started))
    first, rest = timings[0], timings[1:]

    print(f"{' and '.join(MODELS)}: {args.episodes} episodes of {args.rounds} rounds of "
          f"{args.length} ({task.max_steps} steps), torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}\n")  # fmt: skip
    print("| part | first run s | median s | fastest s |")
    print("|---|---:|---:|---:|")
    for index, part in enumerate(("record the episodes (both models)", "metrics table",
                                  "in all")):  # fmt: skip
        values = [timing[index] for timing in rest]
        print(f"| {part} | {first[index]:.3f} | {statistics.median(values):.3f} | "
              f"{min(values):.3f} |")  # fmt: skip
    total = statistics.median(timing[2] for timing in rest)
    verdict = "met" if total <= TARGET_SECONDS else "NOT met"
    print(f"\nTarget: within {TARGET_SECONDS:.0f} s (median {total:.2f} s): {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
