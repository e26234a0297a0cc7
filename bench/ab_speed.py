"""A/B: training-step time and autograd nodes per step, this tree against another commit.

On this shared machine a process's speed drifts by ±30–40% for minutes at a time, so two
full bench runs an hour apart cannot tell a 10% change. This runs the two trees' code in
alternating processes (A, B, A, B, …), one configuration at a time, and reports each
process's minimum wall time over its steps (the least disturbed one), plus the autograd
nodes per time step, which do not drift. The other commit is checked out into a temporary
git worktree, removed afterwards.

    python bench/ab_speed.py --baseline 390502f                 # all configurations
    python bench/ab_speed.py --baseline HEAD~1 --only "SAM 16384" --pairs 4
    python bench/ab_speed.py --baseline HEAD~1 --only "DNC 1024"     # a substring of the names

Configurations are those of step_speed.py (NTM, DNC, named as there) and scaling.py (SAM,
SDNC), on the copy task of 20 8-bit vectors (41 time steps).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import scaling
import step_speed
from graph_size import autograd_nodes

ROOT = Path(__file__).resolve().parent.parent
# name: (model config, batch size): step_speed.py's configurations, then scaling.py's sparse
# memories at 1,024 and 16,384 slots, so an A/B measures exactly what those tables do.
CONFIGS = {
    **{name: (values, batch) for name, (values, batch, *_) in step_speed.CONFIGS.items()},
    **{
        f"{arch.upper()} {slots}": (dict(arch=arch, memory_size=slots, word_size=scaling.WORD,
                                         hidden_size=64, num_layers=2, read_heads=scaling.READS,
                                         sparse_reads=scaling.SPARSE,
                                         temporal_reads=scaling.TEMPORAL), scaling.BATCH)
        for arch in ("sam", "sdnc") for slots in (1024, 16384)
    },
}  # fmt: skip


def measure(name: str, steps: int, threads: int) -> dict:
    """In a child process whose sys.path starts with the tree under test."""
    import torch

    import mann
    from mann.metrics import masked_bce
    from mann.tasks import make_task

    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    values, batch_size = CONFIGS[name]
    model = mann.build_model(mann.ModelConfig(input_size=9, output_size=8, **values))
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-4, momentum=0.9)
    batch = make_task("copy", bits=8, min_length=20, max_length=20).sample(
        batch_size, torch.Generator().manual_seed(0)
    )

    def loss():
        logits, _ = model(batch.inputs)
        return masked_bce(logits, batch.targets, batch.mask)

    times = []
    for index in range(3 + steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        if index >= 3:  # after warm-up (compilation, caches)
            times.append(time.perf_counter() - start)
    nodes = autograd_nodes(loss()) / batch.inputs.shape[1]
    return {"ms": 1000 * min(times), "nodes": nodes, "mann": mann.__file__}


def run_child(tree: Path, name: str, args) -> dict:
    command = [sys.executable, __file__, "--child", name, "--steps", str(args.steps),
               "--threads", str(args.threads)]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(tree))
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not Path(result["mann"]).resolve().is_relative_to(tree.resolve()):
        raise RuntimeError(f"the child imported mann from {result['mann']}, not from {tree}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", help="the commit to compare with (A); B is this tree")
    parser.add_argument("--only", default="", help="substring of the configurations to run")
    parser.add_argument("--pairs", type=int, default=2, help="A/B process pairs per config")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per process")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per process")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.steps, args.threads)))
        return
    if not args.baseline:
        parser.error("--baseline COMMIT is required")
    with tempfile.TemporaryDirectory() as scratch:
        baseline = Path(scratch) / "baseline"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q",
                        str(baseline), args.baseline], check=True)  # fmt: skip
        try:
            print(f"| configuration | {args.baseline} ms | this tree ms "
                  f"| {args.baseline} nodes/step | this tree nodes/step |")  # fmt: skip
            print("|---|---|---|---:|---:|")
            for name in CONFIGS:
                if args.only not in name:
                    continue
                runs = {"a": [], "b": []}
                for _ in range(args.pairs):
                    runs["a"].append(run_child(baseline, name, args))
                    runs["b"].append(run_child(ROOT, name, args))
                a_ms = ", ".join(f"{run['ms']:.1f}" for run in runs["a"])
                b_ms = ", ".join(f"{run['ms']:.1f}" for run in runs["b"])
                print(f"| {name} | {a_ms} | {b_ms} | {runs['a'][0]['nodes']:.1f} "
                      f"| {runs['b'][0]['nodes']:.1f} |", flush=True)  # fmt: skip
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(baseline)], check=False)  # fmt: skip


if __name__ == "__main__":
    main()
