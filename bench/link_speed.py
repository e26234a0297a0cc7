"""The fused temporal link's two paths (mann/fused/link.py), forward and backward, per step (ms).

    python bench/link_speed.py                 # B×N in 16x64, 16x128, 16x256, 8x1024
    python bench/link_speed.py 1x256 4x256     # other sizes

Each measurement runs the link through a sequence of 41 steps, as a DNC on the copy task does
(each step's L_{t-1} is the previous step's output, so the links come from memory, not from
cache), then back through all of them; medians of 5 sequences. "single pass" is
``_FusedLink`` (one numba pass each way), "BLAS" is ``_FusedLargeLink`` (a numba pass for L_t,
the reads through it by torch.bmm), which ``link_and_directions`` takes from
``runtime.LARGE_LINK_ENTRIES`` entries B·N²; each runs its kernels parallel from
``runtime.PARALLEL_MIN_ENTRIES``. "torch" is the composition in ``mann.addressing`` (N ≤ 256).
R = 4 read heads, 2 threads. Run alone.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mann import addressing  # noqa: E402
from mann.fused import link  # noqa: E402

STEPS = 41


def composition(prev_link, precedence, write, read):
    new_link = addressing.temporal_link(prev_link, precedence, write)
    return (new_link, *addressing.directional_weights(new_link, read))


def measure(path: str, batch: int, slots: int, repeats: int = 5) -> tuple[float, float]:
    generator = torch.Generator().manual_seed(0)
    heads = 4

    def weighting(*shape):
        return torch.softmax(3 * torch.randn(*shape, slots, generator=generator), -1)

    writes = [weighting(batch) for _ in range(STEPS)]
    precedences = [weighting(batch) for _ in range(STEPS)]
    reads = [weighting(batch, heads) for _ in range(STEPS)]
    first = (torch.rand(batch, slots, slots, generator=generator) / slots).requires_grad_()
    function = {"torch": composition, "single pass": link._FusedLink.apply,
                "BLAS": link._FusedLargeLink.apply}[path]  # fmt: skip
    forward, backward = [], []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        current, loss = first, 0
        for step in range(STEPS):
            current, f, b = function(current, precedences[step], writes[step], reads[step])
            loss = loss + (f * reads[step]).sum() + (b * writes[step][:, None]).sum()
        middle = time.perf_counter()
        loss.backward()
        end = time.perf_counter()
        forward.append((middle - start) / STEPS)
        backward.append((end - middle) / STEPS)
    return 1000 * statistics.median(forward[1:]), 1000 * statistics.median(backward[1:])


def main() -> None:
    torch.set_num_threads(2)
    torch.set_flush_denormal(True)
    sizes = sys.argv[1:] or ["16x64", "16x128", "16x256", "8x1024"]
    print("| B×N | path | forward ms | backward ms | total ms |")
    print("|---|---|---:|---:|---:|")
    for size in sizes:
        batch, slots = (int(part) for part in size.split("x"))
        paths = ("torch", "single pass", "BLAS") if slots <= 256 else ("single pass", "BLAS")
        for path in paths:
            forward, backward = measure(path, batch, slots)
            total = forward + backward
            print(f"| {size} | {path} | {forward:.3f} | {backward:.3f} | {total:.3f} |")


if __name__ == "__main__":
    main()
