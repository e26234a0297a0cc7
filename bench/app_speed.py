"""How fast the app is where a user waits: first page, loading a model, scrubbing.

    python bench/app_speed.py [--repeats 3] [--no-browser]

Prints one table:

- server up -> first page usable: ``streamlit run app.py`` is started afresh; from the moment
  its health endpoint answers, Debian's chromium opens the home page; "content" is when the
  page's heading is on screen, "finished" when the whole script (sidebar included) has run;
- load checkpoint + record trace: ``mann.load`` of each shipped checkpoint plus
  ``mann.record`` of one sequence (41 steps for copy), in this process, cold file cache
  aside; the scrub figure's build time beside it;
- scrub step in the browser: the Inspect page's figure moved by its own slider (mouse events
  on the slider), until the new frame is painted (two animation frames after plotly's
  ``plotly_animated``), for ntm-copy and dnc-copy.

- what-if rerun: ``mann.whatif.whatif`` of each preset on ntm-copy and dnc-copy (a 41-step
  input: the recorded run and the intervened one), the What if figure's build beside it;
- knob change: Explain recomputing one head's stages with changed knobs and building the
  figure with the recorded stages beside them (the server's work when a knob slider moves).

Targets (issue 5): first page within 3 s, load + record within 0.5 s, scrub step within
150 ms; (issue 18) a what-if rerun of a 41-step trace within 0.3 s, a knob change within 100 ms
of server time. Numbers depend on what else the machine runs; the table says the load average.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.browser import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    REPOSITORY,
    SCRUB_JS,
    settle,
    streamlit_server,
)


def first_page(browser, repeats: int) -> tuple[list[float], list[float]]:
    content, done = [], []
    for _ in range(repeats):
        with streamlit_server() as url:
            up = time.monotonic()
            page = browser.new_page()
            page.goto(url)
            page.wait_for_selector("h1", timeout=60_000)
            content.append(time.monotonic() - up)
            settle(page)
            done.append(time.monotonic() - up)
            page.close()
    return content, done


def scrub_steps(browser, checkpoint: str, moves: int = 20) -> list[float]:
    with streamlit_server() as url:
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        # A fresh server learns the page names from its first run: open home first, else a
        # deep link shows a (harmless) "page not found" dialog over the right page.
        page.goto(url)
        settle(page)
        page.goto(f"{url}/inspect")
        settle(page)
        sidebar = page.get_by_test_id("stSidebar")
        sidebar.get_by_role("combobox").first.click()
        page.get_by_role("option", name=checkpoint, exact=True).click()
        page.get_by_role("heading", name=checkpoint, exact=True).wait_for(timeout=30_000)
        settle(page)
        page.wait_for_function(
            "() => { const gd = document.querySelector('.js-plotly-plot');"
            " return gd && gd.once && gd.querySelector('.slider-rail-rect'); }",
            timeout=30_000,
        )
        page.wait_for_timeout(500)
        fractions = [((i * 7) % moves + 0.5) / moves for i in range(moves)]
        times = page.evaluate(SCRUB_JS, [0, fractions])
        page.close()
    missed = times.count(None)
    if missed:
        raise RuntimeError(f"{missed} of {moves} slider moves painted no frame within 5 s")
    return times


def load_and_record(name: str, repeats: int) -> tuple[int, list[float], list[float]]:
    import mann
    from mann import figures
    from mann.catalog import task_of
    from mann.inputs import record, sample_input, training_lengths

    path = REPOSITORY / "checkpoints" / name
    task = task_of(mann.checkpoint.read_metadata(path))
    length = training_lengths(task)[1]
    batch = sample_input(task, length, seed=0)
    totals, builds = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        model = mann.load(path)
        trace = record(model, batch)
        totals.append(time.perf_counter() - start)
        start = time.perf_counter()
        figures.scrub_figure(trace)
        builds.append(time.perf_counter() - start)
    return trace.steps, totals, builds


def whatif_and_knobs(name: str, repeats: int) -> list[tuple[str, str, str]]:
    import mann
    from mann import figures
    from mann.catalog import task_of
    from mann.inputs import record, sample_input
    from mann.whatif import presets, whatif
    from mann.whatif_figures import whatif_figure

    path = REPOSITORY / "checkpoints" / name
    model = mann.load(path)
    batch = sample_input(task_of(mann.checkpoint.read_metadata(path)), 20, seed=0)
    trace = record(model, batch)
    rows = []
    for preset in presets(trace):
        runs, builds = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            result = whatif(model, batch, preset.interventions)
            runs.append(time.perf_counter() - start)
            start = time.perf_counter()
            whatif_figure(result)
            builds.append(time.perf_counter() - start)
        rows.append((f"what-if rerun, {preset.name} (s)",
                     f"{statistics.median(runs):.3f} (max {max(runs):.3f})", "0.3"))
        rows.append(("  its What if figure (s)", f"{statistics.median(builds):.3f}", ""))
    head = figures.heads(trace)[0]
    step = figures.interesting_step(trace)
    recorded = figures.explanation(trace, step, head)
    knobs = {name: (value * 0.5 + 0.5 if not isinstance(value, list) else value)
             for name, value in recorded.knobs.items()}  # fmt: skip
    times = []
    for _ in range(max(repeats, 5)):
        start = time.perf_counter()
        turned = figures.explanation(trace, step, head, knobs)
        figures.explain_figure(turned, recorded=recorded)
        times.append(time.perf_counter() - start)
    rows.append((f"knob change, {name} {head}: stages + figure (ms)",
                 f"{1000 * statistics.median(times):.0f} (max {1000 * max(times):.0f})", "100"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-browser", action="store_true")
    arguments = parser.parse_args()
    # Killed with SIGTERM (e.g. by `timeout`): unwind, so every server started is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))

    import torch

    torch.set_num_threads(1)
    from mann.catalog import SHIPPED, list_checkpoints

    rows: list[tuple[str, str, str]] = []
    if not arguments.no_browser:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
            )
            content, done = first_page(browser, arguments.repeats)
            rows.append(("server up -> home page content (s)",
                         f"{statistics.median(content):.2f} (max {max(content):.2f})", "3"))
            rows.append(("server up -> home page finished, sidebar too (s)",
                         f"{statistics.median(done):.2f} (max {max(done):.2f})", ""))
            available = list_checkpoints(REPOSITORY / "checkpoints")
            for name in ("ntm-copy", "dnc-copy"):
                if name not in available:
                    continue
                times = sorted(scrub_steps(browser, name))
                p90 = times[int(0.9 * (len(times) - 1))]
                rows.append((f"scrub step in the browser, {name} (ms)",
                             f"{statistics.median(times):.0f} (p90 {p90:.0f})", "150"))
            browser.close()

    for name in list_checkpoints(REPOSITORY / "checkpoints"):
        if name not in SHIPPED:
            continue
        steps, totals, builds = load_and_record(name, max(arguments.repeats, 3))
        rows.append((f"load {name} + record {steps} steps (s)",
                     f"{statistics.median(totals):.3f} (max {max(totals):.3f})", "0.5"))
        rows.append(("  scrub figure for it, built once per trace (s)",
                     f"{statistics.median(builds):.3f}", ""))

    for name in ("ntm-copy", "dnc-copy"):
        if name in list_checkpoints(REPOSITORY / "checkpoints"):
            rows += whatif_and_knobs(name, max(arguments.repeats, 3))

    load = os.getloadavg()[0]
    print(f"\napp speed on {os.cpu_count()} cores, load average {load:.1f} at the end\n")
    width = max(len(row[0]) for row in rows)
    print(f"| {'measure':<{width}} | {'median':>22} | target |")
    print(f"|{'-' * (width + 2)}|{'-' * 24}:|-------:|")
    for measure, value, target in rows:
        print(f"| {measure:<{width}} | {value:>22} | {target:>6} |")


if __name__ == "__main__":
    main()
