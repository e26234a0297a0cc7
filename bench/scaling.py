"""How SAM and SDNC scale with memory size: ms per training step and peak RSS against N.

One training step = forward over a copy sequence of 20 8-bit vectors (41 time steps), the
masked BCE loss, backward, and an optimizer step, at batch 8, word 32, 4 read heads, K = 4
sparse reads (SDNC: K_L = 8 temporal reads, the paper's and ModelConfig's default), LSTM
controller of 64 units in 2 layers. N in 1024, 4096, 16384, 65536, 262144 for SAM and SDNC;
the dense DNC only as far as it fits (its link matrix is N×N per item and per time step).
Each configuration runs in its own process (so its peak RSS is its own) with
``torch.set_num_threads(2)``; times are medians over repeated steps after warm-up. One
process's median drifts by up to ±40% on this shared machine, so each configuration runs in
``--runs`` processes (default 5): the table shows the median of their medians and the highest
peak RSS. "nodes/step" is the autograd nodes of a step's graph per time step
(``graph_size.py``), a count that does not drift with the machine. The CPU
ms column is the process's CPU time per step: with ``--threads 1`` it stays meaningful on a
machine shared with other work, where wall-clock times are not.

    python bench/scaling.py                 # the whole table and docs/scaling.png (run alone)
    python bench/scaling.py --quick         # fewer repeats, N up to 65536, no plot
    python bench/scaling.py --plot-only     # redraw docs/scaling.png from the last full run

The reference columns are what the `dnc` 1.1.0 package measured on this 2-core machine
(issue 4, with a faiss-cpu index injected): SAM 96 / 348 / 1213 ms at N = 1024 / 4096 /
16384 (2.3 GB at 16384), SDNC 127 / 394 / 572 ms, its DNC 10.7 s at 1024. Targets: SAM and
SDNC at N = 65536 take at most 2× their time at N = 1024; at N = 16384 at least 10× faster
than the package; peak memory grows no faster than the memory matrix (B N W float32).

The plot is drawn with plotly, written as a self-contained HTML page and photographed by
Debian's headless chromium (/usr/bin/chromium --screenshot); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from graph_size import autograd_nodes

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(tempfile.gettempdir()) / "mann-scaling.json"  # the last full run, for --plot-only
PLOT = ROOT / "docs" / "scaling.png"
SIZES = (1024, 4096, 16384, 65536, 262144)
DNC_SIZES = (1024,)  # 4096 would need about 22 GB for the N×N links kept for backward
BATCH, WORD, READS, SPARSE, TEMPORAL, LENGTH = 8, 32, 4, 4, 8, 20
REFERENCE_MS = {
    "sam": {1024: 96, 4096: 348, 16384: 1213},
    "sdnc": {1024: 127, 4096: 394, 16384: 572},
    "dnc": {1024: 10700},
}
REFERENCE_MB = {"sam": {16384: 2300}}


def measure(arch: str, slots: int, repeats: int, threads: int, temporal: int) -> dict:
    import torch

    import mann
    from mann.metrics import masked_bce
    from mann.tasks import make_task

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = mann.ModelConfig(
        arch=arch,
        input_size=9,
        output_size=8,
        hidden_size=64,
        num_layers=2,
        memory_size=slots,
        word_size=WORD,
        read_heads=READS,
        sparse_reads=SPARSE,
        temporal_reads=temporal,
    )
    model = mann.build_model(config)
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-4, momentum=0.9)
    # The copy task's own batch (mann.tasks.copy): LENGTH 8-bit vectors, 2 LENGTH + 1 steps.
    batch = make_task("copy", bits=8, min_length=LENGTH, max_length=LENGTH).sample(
        BATCH, torch.Generator().manual_seed(0)
    )
    baseline_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        logits, _ = model(batch.inputs)
        masked_bce(logits, batch.targets, batch.mask).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()

    warmup, times, cpu_times = 2, [], []
    for index in range(warmup + repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        train_step()
        if index >= warmup:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    logits, _ = model(batch.inputs)
    nodes = autograd_nodes(masked_bce(logits, batch.targets, batch.mask)) / batch.inputs.shape[1]
    return {
        "nodes": nodes,
        "ms": 1000 * statistics.median(times),
        "cpu_ms": 1000 * statistics.median(cpu_times),
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "baseline_mb": baseline_mb,
    }


def run_child(arch: str, slots: int, args) -> dict | None:
    command = [
        sys.executable,
        __file__,
        "--only",
        f"{arch}:{slots}",
        "--repeats",
        str(args.repeats),
        "--threads",
        str(args.threads),
        "--temporal-reads",
        str(args.temporal_reads),
    ]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=args.timeout, check=True
        )
    except subprocess.TimeoutExpired:
        print(f"  {arch} N={slots}: over {args.timeout} s, skipped", file=sys.stderr)
        return None
    except subprocess.CalledProcessError as error:
        print(f"  {arch} N={slots} failed:\n{error.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def combined(runs: list[dict | None]) -> dict | None:
    """One configuration's processes as one row: median times, the highest peak RSS."""
    runs = [run for run in runs if run is not None]
    if not runs:
        return None
    return {
        "ms": statistics.median(run["ms"] for run in runs),
        "cpu_ms": statistics.median(run["cpu_ms"] for run in runs),
        "peak_mb": max(run["peak_mb"] for run in runs),
        "baseline_mb": max(run["baseline_mb"] for run in runs),
        "nodes": runs[0].get("nodes"),
        "runs": [run["ms"] for run in runs],
    }


def matrix_mb(slots: int) -> float:
    return BATCH * slots * WORD * 4 / 2**20


def table(results: dict) -> str:
    """The markdown table: one row per (arch, N), references and targets beside."""
    lines = [
        "| arch | N | ms/step | CPU ms/step | package ms | speed-up | vs own N=1024 "
        "| peak RSS MB | RSS over N=1024 MB | memory matrix MB | nodes/step |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arch in ("sam", "sdnc", "dnc"):
        rows = results.get(arch, {})
        first = rows.get("1024")
        for slots in SIZES:
            result = rows.get(str(slots))
            if result is None:
                continue
            reference = REFERENCE_MS[arch].get(slots)
            reference_text = f"{reference:,}" if reference else "-"
            speedup = f"{reference / result['ms']:.1f}×" if reference else "-"
            ratio = f"{result['ms'] / first['ms']:.2f}×" if first else "-"
            growth = f"{result['peak_mb'] - first['peak_mb']:+,.0f}" if first else "-"
            reference_mb = REFERENCE_MB.get(arch, {}).get(slots)
            nodes = f"{result['nodes']:.1f}" if result.get("nodes") else "-"
            peak = f"{result['peak_mb']:,.0f}" + (
                f" (package {reference_mb:,})" if reference_mb else ""
            )
            lines.append(
                f"| {arch.upper()} | {slots:,} | {result['ms']:,.1f} | {result['cpu_ms']:,.1f} "
                f"| {reference_text} "
                f"| {speedup} | {ratio} | {peak} | {growth} | {matrix_mb(slots):,.0f} "
                f"| {nodes} |"
            )
    return "\n".join(lines)


def targets(results: dict) -> list[str]:
    """Each target of issue 4, met or not, with the numbers that decide it."""
    verdicts = []
    for arch in ("sam", "sdnc"):
        rows = results.get(arch, {})
        small, large, middle = rows.get("1024"), rows.get("65536"), rows.get("16384")
        if small and large:
            ratio = large["ms"] / small["ms"]
            verdicts.append(
                f"{arch.upper()} N=65536 / N=1024 time: {ratio:.2f}× (target <= 2×): "
                + ("met" if ratio <= 2 else "NOT met")
            )
        if middle:
            speedup = REFERENCE_MS[arch][16384] / middle["ms"]
            verdicts.append(
                f"{arch.upper()} at N=16384: {speedup:.1f}× faster than the package "
                "(target >= 10×): " + ("met" if speedup >= 10 else "NOT met")
            )
        largest = max((int(key) for key in rows), default=1024)
        if small and largest > 1024:
            growth = rows[str(largest)]["peak_mb"] - small["peak_mb"]
            matrix = matrix_mb(largest) - matrix_mb(1024)
            verdicts.append(
                f"{arch.upper()} peak RSS growth from N=1024 to N={largest}: {growth:,.0f} MB, "
                f"memory matrix growth {matrix:,.0f} MB (target: no more): "
                + ("met" if growth <= matrix else "NOT met")
            )
    return verdicts


def plot(results: dict, path: Path) -> str:
    """Draw ms/step and peak RSS against N; returns how the PNG was made, or why not."""
    from plotly.subplots import make_subplots

    figure = make_subplots(rows=1, cols=2, subplot_titles=("ms per training step", "peak RSS (MB)"))
    colors = {"sam": "#1f77b4", "sdnc": "#d62728", "dnc": "#2ca02c"}
    for arch, rows in results.items():
        sizes = sorted(int(key) for key in rows)
        name = arch.upper()
        figure.add_scatter(
            x=sizes,
            y=[rows[str(n)]["ms"] for n in sizes],
            name=f"{name} (mann)",
            mode="lines+markers",
            line=dict(color=colors[arch]),
            row=1,
            col=1,
        )
        figure.add_scatter(
            x=sizes,
            y=[rows[str(n)]["peak_mb"] for n in sizes],
            showlegend=False,
            mode="lines+markers",
            line=dict(color=colors[arch]),
            row=1,
            col=2,
        )
        reference = REFERENCE_MS[arch]
        figure.add_scatter(
            x=sorted(reference),
            y=[reference[n] for n in sorted(reference)],
            name=f"{name} (dnc 1.1.0)",
            mode="lines+markers",
            line=dict(color=colors[arch], dash="dash"),
            row=1,
            col=1,
        )
    for arch, references in REFERENCE_MB.items():
        figure.add_scatter(
            x=sorted(references),
            y=[references[n] for n in sorted(references)],
            name=f"{arch.upper()} (dnc 1.1.0) peak",
            mode="markers",
            marker=dict(color=colors[arch], symbol="diamond-open", size=10),
            row=1,
            col=2,
        )
    figure.add_scatter(
        x=list(SIZES),
        y=[matrix_mb(n) for n in SIZES],
        name="memory matrix B·N·W",
        mode="lines",
        line=dict(color="gray", dash="dot"),
        row=1,
        col=2,
    )
    for col in (1, 2):
        figure.update_xaxes(type="log", title_text="memory slots N", row=1, col=col)
        figure.update_yaxes(type="log", row=1, col=col)
    figure.update_layout(
        width=1200, height=480, template="plotly_white", margin=dict(l=60, r=20, t=50, b=60)
    )
    browser = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(browser).exists():
        return "no chromium: plot not drawn"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        page = Path(folder) / "scaling.html"
        figure.write_html(page, include_plotlyjs=True, full_html=True, config={"staticPlot": True})
        subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={folder}/profile",
                "--hide-scrollbars",
                "--virtual-time-budget=5000",
                "--window-size=1200,480",
                f"--screenshot={path}",
                page.as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    return f"plot written to {path.relative_to(ROOT)} (plotly HTML photographed by chromium)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 repeats, 1 run, N <= 65536")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per configuration")
    parser.add_argument("--runs", type=int, default=5, help="processes per configuration")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per process")
    parser.add_argument("--temporal-reads", type=int, default=TEMPORAL, help="SDNC's K_L")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per configuration")
    parser.add_argument("--arch", default="sam,sdnc,dnc", help="comma-separated architectures")
    parser.add_argument("--sizes", help="comma-separated memory sizes (default: all)")
    parser.add_argument(
        "--plot-only", action="store_true", help="redraw the plot from the last full run"
    )
    parser.add_argument("--only", help=argparse.SUPPRESS)  # one configuration, in a child
    args = parser.parse_args()
    if args.only:
        arch, slots = args.only.split(":")
        result = measure(arch, int(slots), args.repeats, args.threads, args.temporal_reads)
        print(json.dumps(result))
        return
    if args.plot_only:
        results = json.loads(RESULTS.read_text())
        print(plot(results, PLOT))
        return
    if args.quick:
        args.repeats, args.runs = 2, 1
    sizes = [n for n in SIZES if not (args.quick and n > 65536)]
    if args.sizes:
        sizes = [int(n) for n in args.sizes.split(",")]
    results: dict = {}
    for arch in args.arch.split(","):
        for slots in sizes if arch != "dnc" else DNC_SIZES:
            result = combined([run_child(arch, slots, args) for _ in range(args.runs)])
            if result is not None:
                results.setdefault(arch, {})[str(slots)] = result
                print(
                    f"  {arch} N={slots}: {result['ms']:.1f} ms, {result['peak_mb']:.0f} MB",
                    file=sys.stderr,
                    flush=True,
                )
    print(table(results))
    print()
    for verdict in targets(results):
        print(f"- {verdict}")
    if not args.quick and not args.sizes:  # a full run: keep it and draw it
        RESULTS.write_text(json.dumps(results, indent=1))
        print(plot(results, PLOT))


if __name__ == "__main__":
    main()
