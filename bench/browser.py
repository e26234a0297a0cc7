"""Driving the app in Debian's chromium: the server, the browser's flags, the in-figure scrub.

Shared by bench/app_speed.py (which times these) and tests/test_browser.py (which checks what
they show). Nothing is downloaded: the browser is /usr/bin/chromium, used through Playwright.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
    "--disable-dev-shm-usage",
]  # fmt: skip

# Moves figure number `index`'s own slider with mouse events, once per fraction of its rail,
# and waits each time for the frame to be painted (two animation frames after plotly's
# `plotly_animated`). Returns the milliseconds each move took, null where none came in 5 s.
SCRUB_JS = """async ([index, fractions]) => {
  const gd = document.querySelectorAll('.js-plotly-plot')[index];
  const rail = gd.querySelector('.slider-rail-rect');
  const times = [];
  for (const fraction of fractions) {
    const box = rail.getBoundingClientRect();
    const x = box.left + box.width * fraction, y = box.top + box.height / 2;
    const done = new Promise(resolve => gd.once('plotly_animated', resolve));
    const start = performance.now();
    document.elementFromPoint(x, y).dispatchEvent(
      new MouseEvent('mousedown', {clientX: x, clientY: y, bubbles: true, view: window}));
    gd.dispatchEvent(new MouseEvent('mouseup', {clientX: x, clientY: y, bubbles: true,
                                                view: window}));
    const outcome = await Promise.race([done.then(() => 'ok'),
      new Promise(resolve => setTimeout(() => resolve('timeout'), 5000))]);
    if (outcome !== 'ok') { times.push(null); continue; }
    await new Promise(resolve => requestAnimationFrame(() => requestAnimationFrame(resolve)));
    times.push(performance.now() - start);
  }
  return times;
}"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def streamlit_server(environment: dict | None = None) -> Iterator[str]:
    """`streamlit run app.py` on a free port, one torch thread; yields its base URL once its
    health endpoint answers, and stops it (with its process group) on exit.

    Raises:
        RuntimeError: it exited or did not answer within 60 s (with the end of its output).
    """
    with streamlit_process(environment) as (base, _):
        yield base


@contextlib.contextmanager
def streamlit_process(environment: dict | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """As `streamlit_server`, yielding the server's process beside its URL (to read its CPU
    time and memory from /proc).

    Raises:
        RuntimeError: it exited or did not answer within 60 s (with the end of its output).
    """
    port = free_port()
    environment = dict(environment or os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    # Output to a file, not a pipe: an unread pipe that fills up would stall the server.
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1",
         "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
        cwd=REPOSITORY, env=environment, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/_stcore/health", timeout=1) as reply:
                    if reply.read() == b"ok":
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                output = log.read().decode(errors="replace")
                raise RuntimeError(f"streamlit did not start: {output[-2000:]}")
            time.sleep(0.05)
        yield base, process
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


def settle(page, timeout: float = 60_000) -> None:
    """Wait until the page's script run has finished and nothing is still loading."""
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]',
                           timeout=timeout)  # fmt: skip
    page.wait_for_function(
        "() => document.querySelectorAll('[data-testid=\"stSkeleton\"]').length === 0",
        timeout=timeout,
    )
