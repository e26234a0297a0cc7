"""The whole-sequence node (mann/fused/sequence.py) against the reference step loop.

For each configuration, alternating processes (node, loop, node, loop, …), each reporting:
- train ms: its fastest of ``--steps`` training steps (forward, masked BCE, backward, RMSprop)
  on a copy batch of 20 8-bit vectors (41 time steps), after warm-up;
- eval MB: the peak RSS of one forward pass without gradients over ``--eval-batch`` copy
  sequences of length 80 (161 steps), as ``mann evaluate`` and the app run models, measured
  in a process of its own above what the process held before it.
The node is the "fused" backend (``mann.backend``), the loop the "reference" one: the model's
time loop over the access modules' pure-torch steps.

    python bench/sequence_node.py                      # every configuration (run it alone)
    python bench/sequence_node.py --only GRU --pairs 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DNC = dict(arch="dnc", memory_size=64, word_size=20, hidden_size=64, num_layers=2, read_heads=4)
CONFIGS = {
    # name: (model config, training batch)
    "NTM 128 LSTM B=1": (dict(arch="ntm", memory_size=128, word_size=20, hidden_size=100), 1),
    "DNC 64 LSTM B=16": (DNC, 16),
    "DNC 64 GRU B=16": (dict(DNC, controller="gru"), 16),
    "DNC 64 feed-forward B=16": (dict(DNC, controller="feedforward"), 16),
    "DNC 256 LSTM B=16": (dict(DNC, memory_size=256), 16),
}


def measure(name: str, path: str, mode: str, steps: int, eval_batch: int) -> dict:
    import time

    import torch

    import mann
    from mann.metrics import masked_bce
    from mann.tasks import make_task

    torch.set_num_threads(2)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    os.environ["MANN_BACKEND"] = "fused" if path == "node" else "reference"  # this process
    values, batch_size = CONFIGS[name]
    model = mann.build_model(mann.ModelConfig(input_size=9, output_size=8, **values))
    if mode == "eval":
        batch = make_task("copy", bits=8, min_length=80, max_length=80).sample(
            eval_batch, torch.Generator().manual_seed(0)
        )
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        with torch.no_grad():
            model(batch.inputs)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return {"eval_mb": after - before}
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-4, momentum=0.9)
    batch = make_task("copy", bits=8, min_length=20, max_length=20).sample(
        batch_size, torch.Generator().manual_seed(0)
    )
    times = []
    for index in range(3 + steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        logits, _ = model(batch.inputs)
        masked_bce(logits, batch.targets, batch.mask).backward()
        optimizer.step()
        if index >= 3:
            times.append(time.perf_counter() - start)
    return {"train_ms": 1000 * min(times)}


def child(name: str, path: str, mode: str, args) -> dict:
    command = [sys.executable, __file__, "--child", name, "--path", path, "--mode", mode,
               "--steps", str(args.steps), "--eval-batch", str(args.eval_batch)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="", help="substring of the configurations to run")
    parser.add_argument("--pairs", type=int, default=2, help="node/loop process pairs")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--eval-batch", type=int, default=64, help="sequences evaluated")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--path", choices=("node", "loop"), help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("train", "eval"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.path, args.mode, args.steps, args.eval_batch)))
        return
    print("| configuration | loop train ms | node train ms | loop eval MB | node eval MB |")
    print("|---|---|---|---:|---:|")
    for name in CONFIGS:
        if args.only not in name:
            continue
        train = {"loop": [], "node": []}
        for _ in range(args.pairs):
            for path in ("node", "loop"):
                train[path].append(child(name, path, "train", args)["train_ms"])
        evaluation = {path: child(name, path, "eval", args)["eval_mb"] for path in ("node", "loop")}
        print(f"| {name} | {', '.join(f'{ms:.1f}' for ms in train['loop'])} "
              f"| {', '.join(f'{ms:.1f}' for ms in train['node'])} "
              f"| {evaluation['loop']:,.0f} | {evaluation['node']:,.0f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
