"""A class on one server: many students open the same link at once, then each changes the seed
and scrubs.

    python bench/classroom.py [--students 30] [--training]
                              [--link "/inspect?model=dnc-copy&length=12&seed=3&step=7"]

`streamlit run app.py` is started afresh and warmed by one visitor (the teacher); then one
headless chromium context per student opens the link, all at once, on 127.0.0.1. Each student
then types their own seed and moves the figure's slider. Prints, per phase:

- time to first figure: from the student's navigation start to the first plotly figure drawn
  (the browser's own clock, so a tab waiting for the CPU is counted as waiting);
- server CPU per student: the server process's user + system time over the phase (from
  /proc), divided by the students; the browser's CPU is not in it. The kernels' warm-up
  process the server starts is a separate process and is not counted either;
- of that, what serving Streamlit's frontend files costs (every new browser downloads them
  once; they are then cached for a year): the files the first student's browser fetched,
  fetched again by urllib;
- the server's peak resident memory (VmHWM).

With --training the teacher first starts a training run on the Train page (it keeps running,
queued as a visitor's would be), so the phases measure a class served beside training; the
run trains in a process of its own, whose CPU is not the server's.

Target (issue 21): every student served without error; server CPU per new visitor at most
0.25 s once warm. The students' browsers and the server share this machine's cores, so times
to first figure grow with the class; the server's CPU does not.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.browser import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    SCRUB_JS,
    settle,
    streamlit_process,
)

# Records, in each tab, when the first plotly figure is drawn (ms since navigation start).
FIRST_FIGURE_JS = """
new MutationObserver((_, observer) => {
  if (document.querySelector('.js-plotly-plot .main-svg')) {
    window.__firstFigure = performance.now();
    observer.disconnect();
  }
}).observe(document, {childList: true, subtree: true});
"""
TICKS = 100  # os.sysconf("SC_CLK_TCK") on Linux


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` (all its threads, finished ones too), in s."""
    path = Path(f"/proc/{pid}/stat")
    fields = path.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class ServerCPU:
    """The server process's CPU time (a training run started from the Train page runs in a
    child process of its own, whose CPU is not counted here)."""

    def __init__(self, pid: int):
        self.pid = pid

    def __call__(self) -> float:
        return cpu_seconds(self.pid)


def static_files_cpu(cpu: ServerCPU, urls: list[str], repeats: int = 3) -> tuple[float, int]:
    """Server CPU per fetch of the frontend's files (what every new browser downloads once),
    and their size in bytes."""
    size, before = 0, cpu()
    for _ in range(repeats):
        size = 0
        for url in urls:
            with urllib.request.urlopen(url) as reply:
                size += len(reply.read())
    return (cpu() - before) / repeats, size


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_for_figure(page, timeout: float = 180_000) -> float:
    page.wait_for_function("() => window.__firstFigure !== undefined", timeout=timeout)
    return page.evaluate("window.__firstFigure") / 1000


def start_training(browser, url: str):
    """The teacher starts a long training run on the Train page and leaves the tab open (its
    heartbeat keeps the run going)."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{url}/train")
    settle(page)
    page.get_by_label("steps", exact=True).fill("100000")
    page.get_by_role("button", name="Start training").click()
    page.get_by_text("running: step", exact=False).wait_for(timeout=60_000)
    return page


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--students", type=int, default=30)
    parser.add_argument("--link", default="/inspect?model=dnc-copy&length=12&seed=3&step=7")
    parser.add_argument("--training", action="store_true",
                        help="keep a training run going on the server meanwhile")
    arguments = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))

    from playwright.sync_api import sync_playwright

    rows: list[tuple[str, str]] = []
    with sync_playwright() as playwright, streamlit_process() as (url, server):
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        cpu = ServerCPU(server.pid)
        # The teacher: a fresh server learns its page names from the first run, and builds
        # the models, traces and figures the link needs.
        teacher = browser.new_page(viewport={"width": 1280, "height": 720})
        teacher.goto(url)
        settle(teacher)
        before = cpu()
        teacher.add_init_script(FIRST_FIGURE_JS)
        teacher.goto(url + arguments.link)
        wait_for_figure(teacher)
        settle(teacher)
        rows.append(("teacher's first visit (server CPU, s)", f"{cpu() - before:.2f}"))
        # What the server spends with nobody new arriving (the teacher's Train page following
        # its run), so that a student's own cost can be told from it.
        if arguments.training:
            start_training(browser, url)
            time.sleep(5)
        idle_before, idle_start = cpu(), time.monotonic()
        time.sleep(10)
        idle_rate = (cpu() - idle_before) / (time.monotonic() - idle_start)
        rows.append(("server CPU with no new visitor (s per s)", f"{idle_rate:.4f}"))

        contexts = [browser.new_context(viewport={"width": 1280, "height": 720})
                    for _ in range(arguments.students)]
        pages, files = [], []
        for context in contexts:
            context.add_init_script(FIRST_FIGURE_JS)
            pages.append(context.new_page())
        pages[0].on("request", lambda request: files.append(request.url)
                    if "/static/" in request.url else None)

        before, start = cpu(), time.monotonic()
        for page in pages:
            page.goto(url + arguments.link, wait_until="commit")
        first = [wait_for_figure(page) for page in pages]
        for page in pages:
            settle(page, timeout=180_000)
        load_cpu, load_seconds = cpu() - before, time.monotonic() - start
        rows.append((f"{arguments.students} students open the link: all served",
                     f"{len(first)} of {arguments.students} in {load_seconds:.1f} s"))
        rows.append(("  time to first figure, median (max) (s)",
                     f"{statistics.median(first):.2f} ({max(first):.2f})"))
        rows.append(("  server CPU per student (s)", f"{load_cpu / arguments.students:.3f}"))
        own = (load_cpu - idle_rate * load_seconds) / arguments.students
        rows.append(("  of it, the student's own (less the no-visitor rate) (s)", f"{own:.3f}"))

        before, start = cpu(), time.monotonic()
        for index, page in enumerate(pages):
            seed = page.get_by_test_id("stSidebar").get_by_label("seed")
            seed.fill(str(100 + index))
            seed.press("Enter")
        for page in pages:
            page.wait_for_timeout(50)
            settle(page, timeout=180_000)
        seed_cpu = cpu() - before
        rows.append(("each types their own seed: server CPU per student (s)",
                     f"{seed_cpu / arguments.students:.3f} "
                     f"(all done in {time.monotonic() - start:.1f} s)"))

        before = cpu()
        moves = []
        for page in pages:
            page.locator(".slider-rail-rect").first.scroll_into_view_if_needed()
            moves += page.evaluate(SCRUB_JS, [0, [0.2, 0.5, 0.8]])
        missed = moves.count(None)
        done = sorted(move for move in moves if move is not None)
        rows.append(("each scrubs 3 steps: median (max) ms per step",
                     f"{statistics.median(done):.0f} ({done[-1]:.0f}), {missed} missed"))
        rows.append(("  server CPU for the scrubbing (s)", f"{cpu() - before:.2f}"))
        browser.close()
        per_fetch, size = static_files_cpu(cpu, files)
        rows.append((f"of a new student's CPU: the frontend's {len(files)} files, "
                     f"{size / 2**20:.1f} MiB (s)", f"{per_fetch:.3f}"))
        rows.append(("server peak resident memory (MiB)", f"{peak_rss_mib(server.pid):.0f}"))

    width = max(len(row[0]) for row in rows)
    extra = ", training running" if arguments.training else ""
    print(f"\nclassroom: {arguments.students} students, {arguments.link}{extra}\n")
    print(f"| {'measure':<{width}} | value |")
    print(f"|{'-' * (width + 2)}|------:|")
    for measure, value in rows:
        print(f"| {measure:<{width}} | {value} |")


if __name__ == "__main__":
    main()
