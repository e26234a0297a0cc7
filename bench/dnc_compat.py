"""Training-step speed of the ``dnc`` package (1.1.0) against ``mann.compat.dnc`` on the
package's own copy task.

The loop is the package's ``tasks/copy_task.py`` at its defaults: inputs 6 wide (5 bits and an
end marker), sequences of 1–4 random vectors (3 to 9 steps), batches of 100; a DNC with an
LSTM controller of 64 units (1 layer of 2 hidden layers), 16 slots of 20, 4 read heads,
independent linears; Adam at lr 1e-4 (eps 1e-9, betas 0.9, 0.98), gradients clipped at 50,
``reset_experience=True`` and the memory dict detached after each step. The same script text
runs both: the compat runs add ``mann.compat.dnc.install()`` before ``import dnc``, the one
line a user adds.

Each run is its own process (one torch thread), warms up, then times training steps; the
runs alternate between the two, so the shared machine's drift falls on both alike. The table
shows the median over runs of each run's median ms per step, and their range. SAM and SDNC
(``-memory_type sam|sdnc``: 10 sparse reads, 2 temporal reads) are timed for the compat
layer alone: the package's need FLANN or a GPU faiss index, so they do not run on this CPU.

    PYTHONPATH=/work/dnc-pkg python bench/dnc_compat.py        # the package must be importable
    python bench/dnc_compat.py --runs 5 --steps 60             # more of both

The package is not a dependency; install it apart, without its dependencies (it would pull
another torch): ``pip install --no-deps --target /work/dnc-pkg dnc==1.1.0``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# tasks/copy_task.py's defaults.
COPY_TASK = dict(input_size=6, nhid=64, rnn_type="lstm", nlayer=1, nhlayer=2, dropout=0.0,
                 lr=1e-4, clip=50.0, batch_size=100, mem_size=20, mem_slot=16, read_heads=4,
                 sparse_reads=10, temporal_reads=2, sequence_max_length=4)  # fmt: skip
ROWS = [("DNC", "dnc"), ("SAM", "sam"), ("SDNC", "sdnc")]


def train(memory_type: str, steps: int, warmup: int, seed: int) -> list[float]:
    """The copy task's training loop; ``import dnc`` is whichever package sys.modules holds.
    Returns the seconds of each timed step."""
    import dnc
    import numpy as np
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    np.random.seed(seed)
    args = COPY_TASK

    def generate_data(batch_size, length, size):
        input_data = np.zeros((batch_size, 2 * length + 1, size), dtype=np.float32)
        target_output = np.zeros((batch_size, 2 * length + 1, size), dtype=np.float32)
        sequence = np.random.binomial(1, 0.5, (batch_size, length, size - 1))
        input_data[:, :length, : size - 1] = sequence
        input_data[:, length, -1] = 1  # the end marker
        target_output[:, length + 1 :, : size - 1] = sequence
        return torch.from_numpy(input_data), torch.from_numpy(target_output)

    def criterion(predictions, targets):
        missed = torch.log(1 - torch.sigmoid(predictions) + 1e-9)
        return torch.mean(-1 * F.logsigmoid(predictions) * targets - missed * (1 - targets))

    common = dict(input_size=args["input_size"], hidden_size=args["nhid"],
                  rnn_type=args["rnn_type"], num_layers=args["nlayer"],
                  num_hidden_layers=args["nhlayer"], dropout=args["dropout"],
                  nr_cells=args["mem_slot"], cell_size=args["mem_size"],
                  read_heads=args["read_heads"], gpu_id=-1, debug=False,
                  batch_first=True)  # fmt: skip
    if memory_type == "dnc":
        rnn = dnc.DNC(independent_linears=True, **common)
    elif memory_type == "sdnc":
        rnn = dnc.SDNC(sparse_reads=args["sparse_reads"], temporal_reads=args["temporal_reads"],
                       independent_linears=False, **common)  # fmt: skip
    else:
        rnn = dnc.SAM(sparse_reads=args["sparse_reads"], independent_linears=False, **common)
    optimizer = torch.optim.Adam(rnn.parameters(), lr=args["lr"], eps=1e-9, betas=[0.9, 0.98])

    mhx = None
    times = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        optimizer.zero_grad()
        random_length = np.random.randint(1, args["sequence_max_length"] + 1)
        input_data, target_output = generate_data(args["batch_size"], random_length,
                                                  args["input_size"])  # fmt: skip
        output, (chx, mhx, rv) = rnn(input_data, (None, mhx, None), reset_experience=True,
                                     pass_through_memory=True)  # fmt: skip
        loss = criterion(output, target_output)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(rnn.parameters(), args["clip"])
        optimizer.step()
        mhx = {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in mhx.items()}
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return times


def run_child(implementation: str, memory_type: str, steps: int, warmup: int, seed: int):
    """Time one run in this process and print its median ms per step as JSON."""
    import warnings

    warnings.filterwarnings("ignore")  # the package's deprecation warnings
    if implementation == "compat":
        import mann.compat.dnc

        mann.compat.dnc.install()
    else:
        import importlib.metadata

        import dnc

        version = importlib.metadata.version("dnc")
        if version != "1.1.0" or "mann" in dnc.__file__:
            raise SystemExit(f"found dnc {version} at {dnc.__file__}, not the 1.1.0 package")
    times = train(memory_type, steps, warmup, seed)
    print(json.dumps({"ms": 1000 * statistics.median(times)}))


def package_importable(env: dict) -> str | None:
    """Why the real package cannot run here (None when it can)."""
    probe = ("import importlib.metadata, dnc; "
             "assert importlib.metadata.version('dnc') == '1.1.0'")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env)
    if result.returncode == 0:
        return None
    return (result.stderr.strip().splitlines() or ["unknown"])[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="processes per implementation")
    parser.add_argument("--steps", type=int, default=40, help="timed training steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--child", nargs=2, metavar=("IMPLEMENTATION", "MEMORY"),
                        help=argparse.SUPPRESS)  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(*args.child, args.steps, args.warmup, args.seed)
        return

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = [root, os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in path if p), OMP_NUM_THREADS="1")
    missing = package_importable(env)
    if missing:
        print(f"the dnc 1.1.0 package is not importable ({missing}): timing the compat layer "
              "alone; see the docstring to install it apart")  # fmt: skip

    def median_of_runs(implementation: str, memory_type: str, seed: int) -> float:
        command = [sys.executable, os.path.abspath(__file__), "--child", implementation,
                   memory_type, "--steps", str(args.steps), "--warmup", str(args.warmup),
                   "--seed", str(seed)]  # fmt: skip
        result = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
        return json.loads(result.stdout.strip().splitlines()[-1])["ms"]

    print(f"copy task, batch {COPY_TASK['batch_size']}, lengths 1-"
          f"{COPY_TASK['sequence_max_length']}, one torch thread; median of {args.runs} runs "
          f"x {args.steps} steps (ms per training step)\n")  # fmt: skip
    columns = ["model", "dnc 1.1.0", "range", "mann.compat.dnc", "range", "speed-up"]
    widths = [5, 9, 13, 15, 13, 8]
    header = "| " + " | ".join(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True)) + " |"
    print(header)
    print("|" + "|".join("-" * len(cell) for cell in header.split("|")[1:-1]) + "|")
    for name, memory_type in ROWS:
        runnable = memory_type == "dnc" and not missing  # the package's SAM/SDNC need FLANN
        package_times, compat_times = [], []
        for run in range(args.runs):
            if runnable:
                package_times.append(median_of_runs("package", memory_type, run))
            compat_times.append(median_of_runs("compat", memory_type, run))
        compat_ms = statistics.median(compat_times)
        compat_range = f"{min(compat_times):>6.1f}-{max(compat_times):<6.1f}"
        if package_times:
            package_ms = statistics.median(package_times)
            package_cells = [f"{package_ms:>9.1f}",
                             f"{min(package_times):>6.1f}-{max(package_times):<6.1f}"]  # fmt: skip
            speed_up = f"{package_ms / compat_ms:>7.1f}x"
        else:
            package_cells, speed_up = [f"{'-':>9}", f"{'-':>13}"], f"{'-':>8}"
        cells = [f"{name:<5}", *package_cells, f"{compat_ms:>15.1f}", compat_range, speed_up]
        print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
