"""The reference backend under ``torch.compile`` against the fused kernels and eager torch.

Issue 19 asked whether compiling the pure-torch reference could replace the hand-written
kernels. For each configuration a process of its own, with an empty inductor cache, times:

- compile (cold): the first compiled training step, which traces and compiles;
- new length: the first step on a sequence of another length, which compiles again (a
  curriculum changes the length every few hundred steps; ``dynamic=False`` as the kernels
  specialise on shapes too);
- then a second process on the same cache times the first step again: compile (warm);
- ms per training step (forward, masked BCE, backward) of the eager reference, the fused
  backend and the compiled reference: median of ``--steps`` steps, the modes interleaved.

What is compiled is selected by ``--scope``: ``step`` compiles the memory's one time step
(the model's time loop stays in Python, one compiled graph reused every step), ``loop`` the
model's whole time loop (one graph over every step of the sequence: the longest compiles).

    python bench/compile_speed.py                       # DNC 64 and 256, NTM 128 (run it alone)
    python bench/compile_speed.py --only "DNC 64" --scope loop

Copy task, 20 8-bit vectors (41 time steps), batch 16, one torch thread.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CONFIGS = {
    "DNC 64": dict(arch="dnc", memory_size=64, word_size=20, hidden_size=100, read_heads=1),
    "DNC 256": dict(arch="dnc", memory_size=256, word_size=20, hidden_size=100, read_heads=1),
    "NTM 128": dict(arch="ntm", memory_size=128, word_size=20, hidden_size=100),
}
LENGTH, OTHER_LENGTH, BATCH = 20, 10, 16


def measure(name: str, scope: str, steps: int, warm_only: bool) -> dict:
    """In this process: the compile times and (unless warm_only) the step times."""
    import torch

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    import mann
    from mann.metrics import masked_bce
    from mann.tasks import make_task

    task = make_task("copy")
    config = mann.ModelConfig(
        input_size=task.input_size, output_size=task.output_size, **CONFIGS[name]
    )
    model = mann.build_model(config)

    def batch_of(length: int):
        return task.with_lengths(length, length).sample(BATCH, torch.Generator().manual_seed(0))

    def eager(inputs):
        return model(inputs)[0]

    if scope == "step":
        # One time step of the memory compiled; the model calls it through the reference loop.
        plain_step = model.access.step
        compiled_step = torch.compile(
            lambda interface, state: plain_step(interface, state, record=False), dynamic=False
        )

        def compiled(inputs):
            model.access.step = lambda interface, state, record=False, **_: compiled_step(
                interface, state
            )
            try:
                return model(inputs)[0]
            finally:
                del model.access.step
    else:

        def loop(inputs):
            return model._step_loop(inputs, model.initial_state(inputs.shape[0]), False)[0]

        compiled = torch.compile(loop, dynamic=False)

    def train_step(forward, backend: str, batch) -> float:
        with mann.backend(backend):
            start = time.perf_counter()
            model.zero_grad(set_to_none=True)
            masked_bce(forward(batch.inputs), batch.targets, batch.mask).backward()
            return time.perf_counter() - start

    batch = batch_of(LENGTH)
    result = {"compile": train_step(compiled, "reference", batch)}
    if warm_only:
        return result
    result["new length"] = train_step(compiled, "reference", batch_of(OTHER_LENGTH))
    modes = {"eager": (eager, "reference"), "fused": (eager, "fused"),
             "compiled": (compiled, "reference")}
    for forward, backend in modes.values():  # warm-up (the fused kernels' first call)
        train_step(forward, backend, batch)
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(steps):
        for mode, (forward, backend) in modes.items():
            times[mode].append(train_step(forward, backend, batch))
    result.update({mode: 1000 * statistics.median(values) for mode, values in times.items()})
    return result


def run_child(name: str, scope: str, steps: int, cache: str, warm_only: bool) -> dict:
    environment = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, OMP_NUM_THREADS="1")
    command = [sys.executable, __file__, "--child", name, "--scope", scope,
               "--steps", str(steps)] + (["--warm-only"] if warm_only else [])
    output = subprocess.run(command, env=environment, capture_output=True, text=True, check=True)
    return json.loads(output.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=sorted(CONFIGS))
    parser.add_argument("--scope", choices=("step", "loop"), default="step")
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--child")
    parser.add_argument("--warm-only", action="store_true")
    arguments = parser.parse_args()
    if arguments.child:
        result = measure(arguments.child, arguments.scope, arguments.steps, arguments.warm_only)
        print(json.dumps(result))
        return

    rows = []
    for name in arguments.only or CONFIGS:
        with tempfile.TemporaryDirectory(prefix="inductor-") as cache:
            cold = run_child(name, arguments.scope, arguments.steps, cache, warm_only=False)
            warm = run_child(name, arguments.scope, arguments.steps, cache, warm_only=True)
        rows.append((name, cold, warm["compile"]))
        print(f"{name}: done", file=sys.stderr, flush=True)

    print(f"\ntorch.compile of the reference, scope {arguments.scope}: copy T={2 * LENGTH + 1}, "
          f"batch {BATCH}, 1 thread; ms per training step (median of {arguments.steps})\n")
    print("| model | eager reference | fused | compiled reference | compile cold (s) "
          "| compile warm (s) | new length (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, cold, warm in rows:
        print(f"| {name} | {cold['eager']:.1f} | {cold['fused']:.1f} | {cold['compiled']:.1f} "
              f"| {cold['compile']:.1f} | {warm:.1f} | {cold['new length']:.1f} |")


if __name__ == "__main__":
    main()
