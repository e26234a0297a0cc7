"""The fused temporal link (mann/fused/link.py) against the torch composition in addressing.

Both of its paths, the single pass for small links and the large-link path (forced here at
small sizes by lowering its threshold), each with its kernels serial and parallel: values,
gradients through a loss that uses every output, gradcheck in float64, and a step whose
outputs are partly unused. Also that the two compilations of a kernel keep apart in numba's
disk cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mann import addressing, fused
from mann.fused import runtime

pytestmark = pytest.mark.skipif(not fused.HAVE_NUMBA, reason="the fused kernels need numba")


@pytest.fixture(params=["small", "large", "small parallel", "large parallel"])
def path(request, monkeypatch):
    if request.param.startswith("large"):
        monkeypatch.setattr(runtime, "LARGE_LINK_ENTRIES", 0)
    if request.param.endswith("parallel"):
        monkeypatch.setattr(fused.link, "_kernel", lambda parallel, serial, entries: parallel)
    return request.param


def link_inputs(batch, slots, heads, dtype, seed):
    generator = torch.Generator().manual_seed(seed)

    def weighting(*shape):  # non-negative, each row summing to less than 1
        values = torch.rand(*shape, slots, generator=generator, dtype=dtype)
        return values / (values.sum(-1, keepdim=True) * 1.25)

    link = torch.rand(batch, slots, slots, generator=generator, dtype=dtype) / slots
    link = link * (1 - torch.eye(slots, dtype=dtype))
    return link, weighting(batch), weighting(batch), weighting(batch, heads)


def reference(prev_link, prev_precedence, write_weights, prev_read_weights):
    link = addressing.temporal_link(prev_link, prev_precedence, write_weights)
    forward, backward = addressing.directional_weights(link, prev_read_weights)
    return link, forward, backward


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("batch", "slots", "heads"), [(1, 5, 1), (3, 16, 4), (2, 40, 2)])
def test_values_and_gradients_equal_the_composition(path, dtype, batch, slots, heads):
    tolerance = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=0)
    inputs = [t.requires_grad_() for t in link_inputs(batch, slots, heads, dtype, seed=slots)]
    generator = torch.Generator().manual_seed(7)
    probes = [torch.randn(shape, generator=generator, dtype=dtype)
              for shape in (inputs[0].shape, inputs[3].shape, inputs[3].shape)]  # fmt: skip
    results = []
    for function in (fused.link_and_directions, reference):
        outputs = function(*inputs)
        loss = sum((output * probe).sum() for output, probe in zip(outputs, probes, strict=True))
        results.append((outputs, torch.autograd.grad(loss, inputs)))
    (got, got_grads), (expected, expected_grads) = results
    names = ("link", "forward", "backward")
    names += ("grad prev_link", "grad prev_precedence", "grad write_weights", "grad reads")
    for name, value, want in zip(names, [*got, *got_grads], [*expected, *expected_grads],
                                 strict=True):  # fmt: skip
        torch.testing.assert_close(value, want, **tolerance, msg=lambda t, n=name: f"{n}: {t}")


def test_gradcheck(path):
    inputs = [t.requires_grad_() for t in link_inputs(2, 6, 3, torch.float64, seed=3)]
    assert torch.autograd.gradcheck(fused.link_and_directions, inputs)


def test_unused_outputs_still_give_the_right_gradients(path):
    # Autograd passes None for the gradient of an output the loss never used.
    inputs = [t.requires_grad_() for t in link_inputs(2, 12, 2, torch.float64, seed=4)]
    got = torch.autograd.grad(fused.link_and_directions(*inputs)[1].sum(), inputs)
    expected = torch.autograd.grad(reference(*inputs)[1].sum(), inputs)
    for grad, want in zip(got, expected, strict=True):
        torch.testing.assert_close(grad, want, rtol=1e-10, atol=0)


def test_parallel_and_serial_twins_keep_their_own_cache_entries(tmp_path):
    # numba's disk cache keys a kernel by name and bytecode, not by its flags: compiled twice
    # under one name, whichever compiled first was loaded for both in later processes.
    (tmp_path / "kernels.py").write_text(textwrap.dedent("""
        import numba
        from numba import prange

        from mann.fused.runtime import parallel_and_serial

        def thread_ids(out):
            for i in prange(out.shape[0]):
                out[i] = numba.get_thread_id()

        parallel, serial = parallel_and_serial(thread_ids)
    """))
    script = textwrap.dedent("""
        import numba, numpy as np
        import kernels
        numba.set_num_threads(2)
        for kernel in (kernels.serial, kernels.parallel):  # the serial one compiles first
            out = np.full(64, -1)
            kernel(out)
            print(len(set(out.tolist())))
    """)
    root = Path(__file__).resolve().parent.parent
    environment = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), NUMBA_NUM_THREADS="2",
                       PYTHONPATH=os.pathsep.join([str(tmp_path), str(root)]))  # fmt: skip
    for run in ("compiles", "loads from the cache"):
        result = subprocess.run([sys.executable, "-c", script], env=environment, cwd=tmp_path,
                                capture_output=True, text=True, check=True)  # fmt: skip
        assert result.stdout.split() == ["1", "2"], (run, result.stdout, result.stderr)
    assert list((tmp_path / "cache").rglob("*thread_ids_serial*.nbi"))


def test_the_large_path_is_taken_from_its_threshold(monkeypatch):
    taken = []
    monkeypatch.setattr(runtime, "LARGE_LINK_ENTRIES", 2 * 8 * 8)
    for name in ("_FusedLink", "_FusedLargeLink"):
        function = getattr(fused.link, name)
        monkeypatch.setattr(function, "apply", lambda *a, n=name, f=function.apply: (
            taken.append(n), f(*a))[1])
    fused.link_and_directions(*link_inputs(1, 8, 1, torch.float32, seed=1))
    fused.link_and_directions(*link_inputs(2, 8, 1, torch.float32, seed=1))
    assert taken == ["_FusedLink", "_FusedLargeLink"]
