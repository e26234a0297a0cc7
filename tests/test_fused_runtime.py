"""Tests for what the fused kernels share (mann/fused/runtime.py): the threading layer, and
kernels that split their batch across threads."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import mann
from mann import fused

pytestmark = pytest.mark.skipif(not fused.HAVE_NUMBA, reason="the fused kernels need numba")


def test_kernels_run_on_numbas_openmp_layer_where_libgomp_is_installed():
    # The workqueue layer's sleeping threads took 110-200 µs to wake for each launch here,
    # against 2 µs for OpenMP's; a silent fall-back would cost a DNC 1024 training step a
    # third of its speed.
    import ctypes.util

    script = textwrap.dedent("""
        import numba, torch
        from mann.fused import runtime
        torch.set_num_threads(2)
        runtime.set_threads(1 << 30)  # what every parallel launch does first
        print(numba.threading_layer())
    """)
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True,
                            text=True, check=True, timeout=120)  # fmt: skip
    expected = "omp" if ctypes.util.find_library("gomp") else "workqueue"
    assert result.stdout.split()[-1] == expected, result.stderr


@pytest.mark.parametrize("batch", [2, 5])
@pytest.mark.parametrize("arch", ["ntm", "dnc"])
def test_batch_split_kernels_equal_the_serial_ones_bit_for_bit(monkeypatch, arch, batch):
    # From PARALLEL_MIN_BATCH_WORK the NTM and DNC kernels cut their batch into one part
    # per thread. No item's arithmetic may change, and none may be left out or done twice
    # (5 items split unevenly): a whole model's logits and gradients, exactly.
    import numba

    config = mann.ModelConfig(arch=arch, input_size=5, output_size=4, hidden_size=16,
                              memory_size=128, word_size=20, read_heads=2)  # fmt: skip
    model = mann.build_model(config)
    inputs = torch.randn(batch, 12, 5, generator=torch.Generator().manual_seed(batch))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    results, threads_used = [], []
    try:
        for minimum in (1 << 40, 0):  # serial builds, then parallel ones
            monkeypatch.setattr(fused.runtime, "PARALLEL_MIN_BATCH_WORK", minimum)
            model.zero_grad(set_to_none=True)
            logits, _ = model(inputs)
            threads_used.append(numba.get_num_threads())
            logits.square().sum().backward()
            results.append([logits.detach(), *(p.grad for p in model.parameters())])
    finally:
        torch.set_num_threads(threads)
    assert threads_used == [1, 2]
    for split, serial in zip(results[1], results[0], strict=True):
        assert torch.equal(split, serial)


def test_an_edit_to_an_inlined_file_recompiles_its_callers_cached_kernels(tmp_path):
    """``sparse.content_read_forward`` inlines ``content.py``'s lookup. numba stamps a cache
    entry with the compiled function's own file, so it would load the old machine code after
    an edit to content.py; the kernels' locator stamps it with every kernel file."""
    import shutil

    package = Path(mann.__file__).parent
    shutil.copytree(package, tmp_path / "mann", ignore=shutil.ignore_patterns("__pycache__"))
    script = textwrap.dedent("""
        import numpy as np
        from mann.fused import runtime, sparse
        b, h, k, n, w = 1, 1, 2, 3, 2
        arrays = [np.ones((b, n, w)), np.zeros((b, h, k), np.int64), np.ones((b, h, w)),
                  np.ones((b, h)), np.zeros((b, h, k, w)), np.zeros((b, h, k)),
                  np.zeros((b, h)), np.zeros((b, h, k)), np.zeros((b, h, k)),
                  np.zeros((b, h, w))]
        sparse.content_read_forward(*arrays)
        kernel = sparse.content_read_forward
        assert type(kernel._cache._impl.locator).__name__ == "KernelSourcesLocator"
        print(sum(kernel.stats.cache_hits.values()), sum(kernel.stats.cache_misses.values()))
    """)  # fmt: skip

    def hits_and_misses() -> str:
        environment = {key: value for key, value in os.environ.items()
                       if key != "NUMBA_CACHE_DIR"}  # fmt: skip
        done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=environment,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert hits_and_misses() == ["0", "1"]  # compiled and cached
    assert hits_and_misses() == ["1", "0"]  # loaded from the cache
    content = tmp_path / "mann" / "fused" / "content.py"
    content.write_text(content.read_text() + "\n# an edit\n")
    assert hits_and_misses() == ["0", "1"]  # recompiled: the cached code was stale
