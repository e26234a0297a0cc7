"""How fast do NTM and DNC learn to copy? Sequences seen and seconds until copy is solved.

For each architecture and seed, train on copy (8-bit vectors, lengths 1-20) with the
recommended ``TrainConfig`` defaults (Adam, lr 1e-2, batch 16, gradient-norm clip 10, length
curriculum) and, every ``--eval-every`` steps, measure the mean bit errors per sequence over
one fixed evaluation batch: ``--eval-sequences`` (200) copy problems with lengths drawn
uniformly from 1-20, from a generator seeded with ``--eval-seed`` (the same batch for every run
and every check, and never used for training). A run has converged at the first check under
``--threshold`` (0.1) bit errors per sequence; it gives up at ``--time-limit`` seconds.

"train s" counts the trainer's time only; "wall s" adds the evaluation checks. Run it alone
on the machine (the lead runs it; each run takes up to the time limit):

    python bench/convergence.py                                  # NTM and DNC, seeds 0 1 2
    python bench/convergence.py --archs ntm --seeds 0 --time-limit 20 --eval-every 20  # a check

Reference (issue 3, measured on this 2-core machine): pytorch-ntm reached 0.1 bit errors per
sequence after 7,800-11,200 sequences (7-10 minutes); the `dnc` 1.1.0 package's DNC had not
converged after 10 minutes. Target: every seed of NTM and DNC under 0.1 within 3 minutes.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import mann
from mann.metrics import bit_errors
from mann.tasks import make_task
from mann.train import TrainConfig, train

# The models of the shipped copy checkpoints (NTM as in the NTM paper's copy experiment).
MODELS = {
    "ntm": dict(arch="ntm", hidden_size=100, memory_size=128, word_size=20),
    "dnc": dict(arch="dnc", hidden_size=100, memory_size=64, word_size=20, read_heads=1),
}


def converge(arch: str, seed: int, args: argparse.Namespace) -> dict:
    """Train one model until it solves copy or runs out of time; return what it took."""
    task = make_task("copy", min_length=1, max_length=20)
    evaluation = task.sample(args.eval_sequences, torch.Generator().manual_seed(args.eval_seed))
    model_config = mann.ModelConfig(
        input_size=task.input_size, output_size=task.output_size, **MODELS[arch]
    )
    train_config = TrainConfig(
        task="copy", task_options={"min_length": 1, "max_length": 20}, steps=args.max_steps,
        seed=seed, log_every=args.eval_every,
    )
    torch.manual_seed(seed)  # as train() does, so the model starts where it would
    model = mann.build_model(model_config)
    found: dict = {}
    evaluating = [0.0]  # seconds spent in evaluation checks
    started = time.perf_counter()

    def check(progress) -> None:
        # progress.seconds was read before this call: it includes the earlier checks only.
        train_seconds = progress.seconds - evaluating[0]
        began = time.perf_counter()
        model.eval()
        with torch.no_grad():
            logits, _ = model(evaluation.inputs)
        model.train()
        errors = float(bit_errors(logits, evaluation.targets, evaluation.mask).mean())
        evaluating[0] += time.perf_counter() - began
        found.update(
            errors=errors, step=progress.step, sequences=progress.sequences,
            train_seconds=train_seconds,
        )
        if errors < args.threshold:
            found["converged"] = True

    def should_stop() -> bool:
        return found.get("converged", False) or time.perf_counter() - started > args.time_limit

    train(model_config, train_config, on_progress=check, should_stop=should_stop, model=model)
    return {
        "arch": arch,
        "seed": seed,
        "converged": found.get("converged", False),
        "steps": found.get("step", 0),
        "sequences": found.get("sequences", 0),
        "train_seconds": found.get("train_seconds", 0.0),
        "wall_seconds": time.perf_counter() - started,
        "errors": found.get("errors", float("nan")),
    }


def print_table(results: list[dict], args: argparse.Namespace) -> None:
    print(
        f"\ncopy, lengths 1-20: until under {args.threshold} bit errors per sequence "
        f"(mean over {args.eval_sequences} fixed sequences, checked every {args.eval_every} "
        f"steps; limit {args.time_limit:.0f} s; {args.threads} thread(s))\n"
    )
    print("| arch | seed | solved | steps | sequences | train s | wall s | bit errors / seq |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for row in results:
        print(
            f"| {row['arch']} | {row['seed']} | {'yes' if row['converged'] else 'no'} | "
            f"{row['steps']} | {row['sequences']:,} | {row['train_seconds']:.0f} | "
            f"{row['wall_seconds']:.0f} | {row['errors']:.3f} |"
        )
    for arch in dict.fromkeys(row["arch"] for row in results):
        runs = [row for row in results if row["arch"] == arch]
        solved = [row for row in runs if row["converged"]]
        if solved:
            print(
                f"\n{arch}: {len(solved)}/{len(runs)} seeds solved; median "
                f"{statistics.median(r['sequences'] for r in solved):,.0f} sequences, "
                f"slowest {max(r['wall_seconds'] for r in solved):.0f} s wall",
                end="",
            )
        else:
            print(f"\n{arch}: 0/{len(runs)} seeds solved", end="")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="ntm,dnc", help="comma-separated (default ntm,dnc)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds per run")
    parser.add_argument("--max-steps", type=int, default=100_000)
    parser.add_argument("--eval-every", type=int, default=50, help="steps between checks")
    parser.add_argument("--eval-sequences", type=int, default=200)
    parser.add_argument("--eval-seed", type=int, default=12345)
    parser.add_argument("--threshold", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    archs = [arch.strip() for arch in args.archs.split(",") if arch.strip()]
    unknown = [arch for arch in archs if arch not in MODELS]
    if unknown:
        parser.error(f"--archs: unknown {unknown}; choose from {sorted(MODELS)}")

    results = []
    for arch in archs:
        for seed in args.seeds:
            result = converge(arch, seed, args)
            results.append(result)
            print(
                f"{arch} seed {seed}: {'solved' if result['converged'] else 'not solved'} after "
                f"{result['sequences']:,} sequences, {result['wall_seconds']:.0f} s "
                f"({result['errors']:.3f} bit errors/seq)",
                flush=True,
            )
    print_table(results, args)


if __name__ == "__main__":
    main()
