"""Training throughput on 1 and 2 processes (torchrun, DistributedDataParallel): sequences per
second and the scaling efficiency.

    python bench/ddp_throughput.py                       # CPU: 1 and 2 ranks, one thread each
    python bench/ddp_throughput.py --device cuda --ranks 1,2,4,8   # a machine with 8 GPUs

Each measurement is the command a user runs, ``torchrun --standalone --nproc-per-node N -m mann
--threads T train ...`` (with N = 1 torchrun starts one process and mann trains alone, without a
process group), on copy sequences of exactly --length items (so every rank's batch costs the
same), --batch-size sequences per rank and step, no curriculum. Throughput comes from the run's
metrics CSV: the sequences of every rank trained between the end of step --warmup and the last
step, over the seconds between them; start-up (processes, the process group, the kernels) is
left out. Efficiency is throughput on N ranks / (N x throughput on 1). Runs of 1 and of N
ranks alternate, --runs times each; the table gives the median and the range.

On the CPU each process takes one thread, so N ranks need N free cores: on a machine shared with
other work the 2-rank numbers fall first. The load average before the first run is printed with
the table.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ARCHITECTURES = {
    # The recommended sizes (mann.train.TrainConfig's docstring).
    "ntm": ["--arch", "ntm", "--hidden-size", "100", "--memory-size", "128", "--word-size", "20"],
    "dnc": ["--arch", "dnc", "--hidden-size", "100", "--memory-size", "64", "--word-size", "20"],
}


def run(arch: str, ranks: int, args: argparse.Namespace, directory: Path) -> float:
    """One training run of ``ranks`` processes; its sequences per second after warm-up."""
    out = directory / f"{arch}-{ranks}"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
        str(ranks), "-m", "mann", "--threads", str(args.threads), "train", *ARCHITECTURES[arch],
        "--task", "copy", "--min-length", str(args.length), "--max-length", str(args.length),
        "--curriculum", "none", "--batch-size", str(args.batch_size), "--steps", str(args.steps),
        "--log-every", "1", "--checkpoint-every", str(args.steps), "--device", args.device,
        "--quiet", "--out", str(out),
    ]  # fmt: skip
    environment = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(REPO))
    done = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    with out.with_suffix(".csv").open(newline="") as handle:
        rows = {int(row["step"]): row for row in csv.DictReader(handle)}
    first, last = rows[args.warmup], rows[args.steps]
    sequences = int(last["sequences"]) - int(first["sequences"])
    return sequences / (float(last["seconds"]) - float(first["seconds"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="ntm,dnc", help="comma-separated (default ntm,dnc)")
    parser.add_argument("--ranks", default="1,2", help="comma-separated process counts")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (mann --device)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--length", type=int, default=20, help="copy sequence length")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per rank and step")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10, help="steps left out of the timing")
    parser.add_argument("--runs", type=int, default=3, help="runs of each count, alternating")
    args = parser.parse_args()
    architectures = args.arch.split(",")
    counts = [int(count) for count in args.ranks.split(",")]
    if not 0 < args.warmup < args.steps:
        raise SystemExit("--warmup must be between 0 and --steps")

    load = os.getloadavg()
    started = time.perf_counter()
    results: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory() as directory:
        for arch in architectures:
            for _ in range(args.runs):
                for ranks in counts:
                    rate = run(arch, ranks, args, Path(directory))
                    results.setdefault((arch, ranks), []).append(rate)
                    print(f"{arch} x{ranks}: {rate:.1f} sequences/s", file=sys.stderr)

    print(f"\n{os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          f"before the first run; {args.device}, {args.threads} thread(s) per process; copy of "
          f"length {args.length}, {args.batch_size} sequences per rank and step, steps "
          f"{args.warmup + 1}-{args.steps} timed, {args.runs} runs each "
          f"({time.perf_counter() - started:.0f} s in all)\n")  # fmt: skip
    print("| arch | ranks | sequences/s (median) | range | scaling efficiency |")
    print("|---|---:|---:|---:|---:|")
    for arch in architectures:
        alone = statistics.median(results[(arch, counts[0])]) / counts[0]
        for ranks in counts:
            rates = results[(arch, ranks)]
            median = statistics.median(rates)
            print(f"| {arch} | {ranks} | {median:.1f} | {min(rates):.1f}-{max(rates):.1f} | "
                  f"{100 * median / (ranks * alone):.0f}% |")  # fmt: skip


if __name__ == "__main__":
    main()
