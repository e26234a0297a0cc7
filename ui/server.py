"""What the app does once per server: where its files are, running each page inside app.py's
navigation, compiling the kernels in the background, and freezing long-lived objects.
"""

from __future__ import annotations

import contextlib
import gc
import os
import runpy
import subprocess
import sys
import threading
from pathlib import Path

import streamlit as st

REPOSITORY = Path(__file__).resolve().parent.parent


PAGES = {
    "home": "pages/home.py",
    "inspect": "pages/inspect.py",
    "explain": "pages/explain.py",
    "compare": "pages/compare.py",
    "train": "pages/train.py",
    "generalisation": "pages/generalisation.py",
    "patterns": "pages/patterns.py",
    "whatif": "pages/whatif.py",
    "learn": "pages/learn.py",
    "export": "pages/export.py",
}


# Whether this thread's script run is inside app.py's navigation (``inside_app``).
_APP_RUN = threading.local()


@contextlib.contextmanager
def inside_app():
    """app.py runs the chosen page inside this: ``page_needs_app`` then knows it is served
    as every page should be, within app.py's navigation and sidebar."""
    _APP_RUN.inside = True
    try:
        yield
    finally:
        _APP_RUN.inside = False


def page_needs_app() -> None:
    """Each page's first call: where Streamlit ran the page file on its own, run app.py
    instead (which serves this page inside its navigation and sidebar), then end the run.

    That happens once per server: until ``st.navigation`` has run in some session,
    Streamlit routes by the ``pages/`` directory (streamlit#8860), so the first request
    for /inspect runs pages/inspect.py without app.py. The page files are named after their
    URLs so that this routing finds them; were they not, it would show a "Page not found"
    dialog over the page (tests/test_browser.py checks neither happens).
    """
    if not getattr(_APP_RUN, "inside", False):
        runpy.run_path(str(REPOSITORY / "app.py"))
        st.stop()


def checkpoint_dir() -> Path:
    """Where checkpoints are listed and saved: ``$MANN_CHECKPOINTS`` or ``checkpoints/``."""
    return Path(os.environ.get("MANN_CHECKPOINTS", REPOSITORY / "checkpoints"))


@st.cache_resource(show_spinner=False)
def kernel_warm_up() -> subprocess.Popen:
    """Start ``mann.catalog.warm_kernels`` in a background process, once per server.

    On a fresh machine numba needs over a minute to compile SAM's and SDNC's kernels; this
    way that mostly passes while the user reads the first page. A process, not a thread:
    numba compiles under one lock per process, and in a thread the warm-up's compiles would
    hold up the pages' own (a DNC page waited behind SDNC's kernels). The pages load what it
    caches on disk; whatever they need before then, they compile themselves, as without it.
    It runs at low priority, with one thread, so it yields to the pages.
    """
    code = ("import os\nif hasattr(os, \"nice\"): os.nice(10)  # POSIX only\n"
            "from mann.catalog import warm_kernels\nwarm_kernels()")
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPOSITORY, env=environment,
                            stdout=subprocess.DEVNULL)


@st.cache_resource(show_spinner=False)
def freeze_long_lived_objects() -> int:
    """Exempt what exists after the first page has run (the imported modules: torch, plotly,
    pandas, streamlit, ...) from the garbage collector's full passes, once per server.

    A full collection must otherwise scan a quarter of a million long-lived objects: 0.17 s.
    Streamlit runs one after every script run unless told not to (.streamlit/config.toml does,
    when the app is started from the repository); frozen, a pass scans only what was made
    since (0.02 s with four models, their traces and figures cached). Returns the number of
    objects frozen.
    """
    gc.collect()  # whatever is garbage now is freed, not frozen for good
    gc.freeze()
    return gc.get_freeze_count()


def first_run_note() -> str:
    """What a spinner adds while the kernels are still compiling (empty once they are not)."""
    if kernel_warm_up().poll() is not None:
        return ""
    return " The CPU kernels are still being compiled (once per machine, about a minute)."
