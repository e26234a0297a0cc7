"""What a fresh machine waits for before the first run: numba compiling the fused kernels.

    python bench/first_run.py              # run alone: compiling is one core's work

Each architecture's untrained copy model (``mann.catalog.warm_kernels``: evaluated, recorded,
trained on a tiny batch) runs in a process of its own against one numba cache directory that
starts empty, in the order the app warms them (NTM, DNC, SAM, SDNC), so each row is what that
architecture adds to the ones before it. Then all four again against the now full cache: what
every later start costs. Prints one table; times include the process's imports.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mann.catalog import UNTRAINED_SIZES  # noqa: E402

CODE = (
    "import sys; from mann.catalog import untrained_config, warm_kernels; "
    "from mann.tasks import make_task; "
    "warm_kernels([untrained_config(a, make_task('copy')) for a in sys.argv[1:]])"
)


def timed_run(architectures: list[str], cache: str) -> float:
    """Seconds for one process warming ``architectures`` against numba cache ``cache``."""
    environment = dict(os.environ, NUMBA_CACHE_DIR=cache, OMP_NUM_THREADS="1")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", CODE, *architectures], cwd=ROOT, env=environment,
                   check=True)  # fmt: skip
    return time.perf_counter() - started


def main() -> None:
    architectures = list(UNTRAINED_SIZES)
    rows = []
    with tempfile.TemporaryDirectory(prefix="numba-cache-") as cache:
        for arch in architectures:
            rows.append((f"{arch.upper()}, cold cache", timed_run([arch], cache)))
        cold = sum(seconds for _, seconds in rows)
        rows.append(("all four, cold cache (sum of the above)", cold))
        rows.append(("all four, warm cache (one process)", timed_run(architectures, cache)))
    print("| what | s |")
    print("|---|---:|")
    for what, seconds in rows:
        print(f"| {what} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
