"""Training-step speed and peak memory of NTM and DNC on the copy task.

One training step = forward over a copy sequence of 20 8-bit vectors (41 time steps), the
masked BCE loss, backward, and an optimizer step. Each configuration runs in its own
process so its peak RSS is its own; times are medians over repeated steps after warm-up.
On this shared machine one process's median still drifts by 20-50% from the next's, so each
configuration runs in --runs processes (default 3): the table shows the median of their
medians and, in "range", the lowest and highest. "ops/step" counts the aten operator calls
(torch.profiler events) of one training step, forward and backward; "nodes/step" the autograd
nodes of its graph per time step (``graph_size.py``): counts that do not drift with the machine.

    python bench/step_speed.py            # the whole table (run it alone on the machine)
    python bench/step_speed.py --quick    # fewer repeats

The reference column holds what the public implementations measured on this 2-core CPU
machine (issue 2): pytorch-ntm for NTM, the `dnc` 1.1.0 package for DNC.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from graph_size import autograd_nodes

CONFIGS = {
    # name: (model config, batch size, reference ms, reference peak MB or None)
    "NTM 128x20 B=1": (
        dict(arch="ntm", memory_size=128, word_size=20, hidden_size=100),
        1,
        89,
        None,
    ),
    "NTM 128x20 B=16": (
        dict(arch="ntm", memory_size=128, word_size=20, hidden_size=100),
        16,
        301,
        None,
    ),
    "DNC 64x20 B=16": (
        dict(arch="dnc", memory_size=64, word_size=20, hidden_size=64, num_layers=2, read_heads=4),
        16,
        182,
        None,
    ),
    "DNC 256x20 B=16": (
        dict(arch="dnc", memory_size=256, word_size=20, hidden_size=64, num_layers=2, read_heads=4),
        16,
        508,
        1240,
    ),
    "DNC 1024x32 B=8": (
        dict(
            arch="dnc", memory_size=1024, word_size=32, hidden_size=64, num_layers=2, read_heads=4
        ),
        8,
        10700,
        3400,
    ),
}


def measure(name: str, repeats: int, threads: int) -> dict:
    import torch

    import mann
    from mann.metrics import masked_bce
    from mann.tasks import make_task

    torch.set_num_threads(threads)
    # Sharpening and softmax underflow to subnormal floats, which x86 computes ~100x slower.
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    config_values, batch_size, _, _ = CONFIGS[name]
    config = mann.ModelConfig(input_size=9, output_size=8, **config_values)
    model = mann.build_model(config)
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-4, momentum=0.9)
    # The copy task's own batch (mann.tasks.copy): 20 8-bit vectors, 41 steps.
    batch = make_task("copy", bits=8, min_length=20, max_length=20).sample(
        batch_size, torch.Generator().manual_seed(0)
    )

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        logits, _ = model(batch.inputs)
        loss = masked_bce(logits, batch.targets, batch.mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()

    warmup = 2
    times = []
    for index in range(warmup + repeats):
        start = time.perf_counter()
        train_step()
        if index >= warmup:
            times.append(time.perf_counter() - start)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # Operator calls of one more step, forward and backward: what dispatch costs scale with.
    with torch.profiler.profile() as profile:
        train_step()
    operators = sum(event.count for event in profile.key_averages())
    logits, _ = model(batch.inputs)
    nodes = autograd_nodes(masked_bce(logits, batch.targets, batch.mask)) / batch.inputs.shape[1]
    return {"ms": 1000 * statistics.median(times), "peak_mb": peak_mb, "operators": operators,
            "nodes": nodes}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--only", help="run one configuration (used internally)")
    parser.add_argument("--filter", default="", help="substring of the configurations to run")
    parser.add_argument("--runs", type=int, default=3, help="processes per configuration")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per process")
    args = parser.parse_args()
    if args.only:
        repeats = 3 if "1024" in args.only else (5 if args.quick else 15)
        print(json.dumps(measure(args.only, repeats, args.threads)))
        return

    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])
    )
    columns = ["configuration", "ms/step", "range", "reference ms", "speed-up", "peak RSS MB",
               "ref. MB", "ops/step", "nodes/step"]  # fmt: skip
    widths = [18, 8, 13, 12, 8, 11, 8, 8, 10]
    header = "| " + " | ".join(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True)) + " |"
    print(header)
    print("|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|")
    for name, (_, _, reference_ms, reference_mb) in CONFIGS.items():
        if args.filter not in name:
            continue
        command = [sys.executable, __file__, "--only", name, "--threads", str(args.threads)]
        command += ["--quick"] if args.quick else []
        runs = [
            json.loads(
                subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
            )
            for _ in range(args.runs)
        ]
        times = [run["ms"] for run in runs]
        result = {"ms": statistics.median(times), "peak_mb": max(r["peak_mb"] for r in runs),
                  "operators": runs[0]["operators"], "nodes": runs[0]["nodes"]}  # fmt: skip
        reference_mb_text = f"{reference_mb:,}" if reference_mb else "-"
        cells = [
            f"{name:<18}",
            f"{result['ms']:>8.1f}",
            f"{min(times):>6.1f}-{max(times):<6.1f}",
            f"{reference_ms:>12,}",
            f"{reference_ms / result['ms']:>7.1f}x",
            f"{result['peak_mb']:>11,.0f}",
            f"{reference_mb_text:>8}",
            f"{result['operators']:>8,}",
            f"{result['nodes']:>10.1f}",
        ]
        print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
