"""The backends (mann.backends): the reference is pure torch and calls its equations through
``mann.addressing``, so a patched equation reaches training; kernels are registered per access
class exactly; "fused" refuses what it cannot run; the reference runs without numba."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mann
from mann import addressing
from mann.access.dnc import DNCAccess
from mann.backends import BACKENDS, BackendError, active, kernel_for
from mann.metrics import masked_bce
from mann.tasks import make_task

torch.set_num_threads(1)

REPOSITORY = Path(__file__).resolve().parent.parent
TASK = make_task("copy", bits=4, max_length=5)
MEMORIES = ("ntm", "dnc", "sam", "sdnc")


def small_model(arch: str) -> mann.MemoryAugmentedNetwork:
    torch.manual_seed(0)
    return mann.build_model(mann.ModelConfig(
        arch=arch, input_size=TASK.input_size, output_size=TASK.output_size, hidden_size=12,
        memory_size=10, word_size=4, read_heads=2,
    ))  # fmt: skip


def training_output(model) -> tuple[torch.Tensor, list[torch.Tensor]]:
    batch = TASK.with_lengths(5, 5).sample(3, torch.Generator().manual_seed(1))
    model.zero_grad()
    logits, _ = model(batch.inputs)
    masked_bce(logits, batch.targets, batch.mask).backward()
    return logits.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("arch", MEMORIES)
def test_a_patched_equation_changes_training_under_the_reference(arch, monkeypatch):
    model = small_model(arch)
    with mann.backend("reference"):
        logits, gradients = training_output(model)
    # Sharper content lookups: every memory's reads go through these two functions.
    dense, sparse = addressing.content_weights, addressing.sparse_content_weights
    monkeypatch.setattr(addressing, "content_weights",
                        lambda memory, keys, strengths: dense(memory, keys, 3 * strengths))
    monkeypatch.setattr(addressing, "sparse_content_weights",
                        lambda rows, keys, strengths: sparse(rows, keys, 3 * strengths))
    with mann.backend("reference"):
        patched_logits, patched_gradients = training_output(model)
    assert not torch.allclose(patched_logits, logits)
    assert any(not torch.allclose(a, b) for a, b in zip(patched_gradients, gradients, strict=True))
    # "auto" trains by the kernels, which the patch does not reach: it equals the unpatched.
    with mann.backend("auto"):
        fused_logits, _ = training_output(model)
    assert mann.backend_for(model) == "fused"
    torch.testing.assert_close(fused_logits, logits, rtol=1e-5, atol=1e-5)


def test_a_subclass_runs_the_reference_unless_it_registers_a_kernel():
    class SharperDNC(DNCAccess):  # a researcher's variant: the kernels know nothing of it
        pass

    model = small_model("dnc")
    model.access.__class__ = SharperDNC
    assert mann.backend_for(model) == "reference"
    with pytest.raises(BackendError, match="no fused kernel is registered for SharperDNC"):
        with mann.backend("fused"):
            model(torch.zeros(1, 3, TASK.input_size))
    from mann import backends

    calls = []
    own = backends.Kernel("SharperDNC's own", missing=lambda *_: None,
                          run=lambda *arguments: calls.append(1))  # fmt: skip
    backends.register(SharperDNC, own)
    try:
        assert mann.backend_for(model) == "fused"
        assert backends.kernel_for(model) is own
    finally:
        del backends._KERNELS[SharperDNC]
    # The kernels registered for DNCAccess itself never take the subclass.
    assert backends.registered()[DNCAccess].missing(model, None, None) is not None


def test_fused_names_what_it_cannot_run():
    lstm = small_model("lstm")
    with mann.backend("fused"), pytest.raises(BackendError, match="NoMemoryAccess"):
        lstm(torch.zeros(1, 3, TASK.input_size))
    model = mann.build_model(mann.ModelConfig(arch="ntm", input_size=TASK.input_size,
                                              output_size=TASK.output_size, clip_value=0.5))
    with mann.backend("fused"), pytest.raises(BackendError, match="clip_value=0.5 < 1"):
        model(torch.zeros(1, 3, TASK.input_size))
    with mann.backend("auto"):  # auto: the reference instead
        assert mann.backend_for(model) == "reference"
        model(torch.zeros(1, 3, TASK.input_size))


def test_recording_and_interventions_take_the_reference_under_every_backend():
    model = small_model("dnc")
    inputs = torch.rand(2, 4, TASK.input_size)
    for name in BACKENDS:
        with mann.backend(name):
            assert kernel_for(model, inputs) is None or name != "reference"
            _, _, trace = model(inputs, record=True)  # never raises, even under "fused"
            assert trace.link is not None


def test_the_backend_nests_and_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("MANN_BACKEND", raising=False)
    assert active() == "auto"
    with mann.backend("reference"):
        assert active() == "reference"
        with mann.backend("fused"):
            assert active() == "fused"
        assert active() == "reference"
    monkeypatch.setenv("MANN_BACKEND", "reference")
    assert active() == "reference"
    assert mann.backend_for(small_model("ntm")) == "reference"
    monkeypatch.setenv("MANN_BACKEND", "fast")
    with pytest.raises(BackendError, match="MANN_BACKEND must be one of"):
        active()
    with pytest.raises(BackendError, match="backend must be one of"):
        with mann.backend("numba"):
            pass


def test_access_modules_and_controller_never_import_the_kernels():
    import ast

    for path in [*sorted((REPOSITORY / "mann" / "access").glob("*.py")),
                 REPOSITORY / "mann" / "controller.py", REPOSITORY / "mann" / "addressing.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                assert not name.startswith(("mann.fused", "numba")), (path.name, name)


@pytest.mark.slow
def test_the_reference_trains_every_memory_without_numba():
    # A fresh interpreter in which numba cannot be imported.
    script = """
import sys
sys.modules["numba"] = None  # import numba -> ImportError
import torch, mann
from mann.fused.runtime import HAVE_NUMBA
assert not HAVE_NUMBA
from mann.tasks import make_task
task = make_task("copy", bits=4, max_length=4)
batch = task.sample(2, torch.Generator().manual_seed(0))
for arch in ("ntm", "dnc", "sam", "sdnc", "lstm"):
    model = mann.build_model(mann.ModelConfig(arch=arch, input_size=5, output_size=4,
                                              hidden_size=8, memory_size=8, word_size=4))
    assert mann.backend_for(model) == "reference", arch
    logits, _ = model(batch.inputs)
    logits.sum().backward()
    _, _, trace = model(batch.inputs, record=True)
    print(arch, "ok")
"""
    environment = dict(os.environ, PYTHONPATH=str(REPOSITORY), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300, env=environment, cwd=REPOSITORY)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ntm", "ok", "dnc", "ok", "sam", "ok", "sdnc", "ok",
                                     "lstm", "ok"]  # fmt: skip
