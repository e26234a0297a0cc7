"""The fused link's two paths, forward and backward, per time step (ms, medians).

    python bench/link_speed.py                 # B×N in 16x64, 16x128, 16x256, 8x1024
    python bench/link_speed.py 1x256 4x256     # other sizes

"single pass" is ``_FusedLink`` (one numba pass each way), "BLAS" is ``_FusedLargeLink``
(a numba pass for L_t, the reads through it by torch.bmm); ``link_and_directions`` takes the
BLAS path from ``runtime.LARGE_LINK_ENTRIES`` entries. R = 4 read heads, 2 threads. Run alone.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from mann.fused import link


def inputs(batch: int, slots: int, heads: int = 4):
    generator = torch.Generator().manual_seed(0)
    prev_link = torch.rand(batch, slots, slots, generator=generator) / slots
    precedence = torch.softmax(torch.randn(batch, slots, generator=generator), -1)
    write = torch.softmax(3 * torch.randn(batch, slots, generator=generator), -1)
    read = torch.softmax(torch.randn(batch, heads, slots, generator=generator), -1)
    return [t.requires_grad_() for t in (prev_link, precedence, write, read)]


def measure(function, batch: int, slots: int, repeats: int) -> tuple[float, float]:
    tensors = inputs(batch, slots)
    gradients = (torch.randn(batch, slots, slots), torch.randn(batch, 4, slots),
                 torch.randn(batch, 4, slots))  # fmt: skip
    forward, backward = [], []
    for index in range(repeats + 3):
        start = time.perf_counter()
        outputs = function(*tensors)
        middle = time.perf_counter()
        torch.autograd.backward(outputs, gradients)
        end = time.perf_counter()
        if index >= 3:
            forward.append(middle - start)
            backward.append(end - middle)
    return 1000 * statistics.median(forward), 1000 * statistics.median(backward)


def main() -> None:
    torch.set_num_threads(2)
    torch.set_flush_denormal(True)
    sizes = sys.argv[1:] or ["16x64", "16x128", "16x256", "8x1024"]
    print("| B×N | path | forward ms | backward ms | total ms |")
    print("|---|---|---:|---:|---:|")
    for size in sizes:
        batch, slots = (int(part) for part in size.split("x"))
        repeats = 10 if slots >= 1024 else 30
        for name, function in (("single pass", link._FusedLink.apply),
                               ("BLAS", link._FusedLargeLink.apply)):  # fmt: skip
            forward, backward = measure(function, batch, slots, repeats)
            total = forward + backward
            print(f"| {size} | {name} | {forward:.3f} | {backward:.3f} | {total:.3f} |")


if __name__ == "__main__":
    main()
