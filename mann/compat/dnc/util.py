"""The helpers of the ``dnc`` 1.1.0 package's ``dnc.util`` that user scripts import: tensor
placement (``cuda``, ``cudavec``, ``cudalong``, ``ensure_gpu``, ``ptr``), the batched cosine
similarity ``θ`` and softmax ``σ`` with their constant ``δ``, and NaN-gradient hooks.

Same names and arguments as 1.1.0. ``gpu_id=-1`` means the CPU; a ``gpu_id >= 0`` without
CUDA raises a ValueError naming it. ``cudalong`` uses int64 (1.1.0 used ``np.long``, which
numpy 1.24 removed).
"""

from __future__ import annotations

# re, string, T, F and Variable: 1.1.0's util bound them, so `from dnc.util import *` gave them.
import re
import string

import numpy as np
import torch
import torch as T
import torch.nn.functional as F
from torch import nn
from torch.autograd import Variable

from mann import addressing

__all__ = [
    "F", "T", "Variable", "apply_dict", "apply_var", "check_nan_gradient", "cuda", "cudalong",
    "cudavec", "ensure_gpu", "nn", "np", "print_gradient", "ptr", "re", "recursiveTrace",
    "register_nan_checks", "string", "torch", "δ", "θ", "σ",
]  # fmt: skip

# The ε of 1.1.0's cosine similarity and allocation; this library's EPSILON.
δ = addressing.EPSILON


def _device(gpu_id: int) -> torch.device:
    if gpu_id is None or gpu_id < 0:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"gpu_id={gpu_id} asks for CUDA device {gpu_id}, but CUDA is not "
                         "available here; use gpu_id=-1 for the CPU")  # fmt: skip
    return torch.device("cuda", gpu_id)


def _placed(tensor: torch.Tensor, grad: bool, gpu_id: int) -> torch.Tensor:
    # A new leaf on the asked device, so requires_grad can be set whatever the input was.
    return tensor.detach().to(_device(gpu_id)).requires_grad_(grad)


def cuda(x, grad: bool = False, gpu_id: int = -1) -> torch.Tensor:
    """``x`` (tensor, array or list) as a float32 tensor on the CPU (``gpu_id=-1``) or CUDA
    device ``gpu_id``, a leaf with ``requires_grad=grad``."""
    return _placed(torch.as_tensor(x, dtype=torch.float32), grad, gpu_id)


def cudavec(x, grad: bool = False, gpu_id: int = -1) -> torch.Tensor:
    """A numpy array as a float32 tensor placed as by ``cuda``."""
    return _placed(torch.as_tensor(np.asarray(x), dtype=torch.float32), grad, gpu_id)


def cudalong(x, grad: bool = False, gpu_id: int = -1) -> torch.Tensor:
    """A numpy array as an int64 tensor placed as by ``cuda`` (``grad`` must be False:
    integer tensors have no gradient)."""
    return _placed(torch.as_tensor(np.asarray(x).astype(np.int64)), grad, gpu_id)


def θ(a: torch.Tensor, b: torch.Tensor, normBy: float = 2) -> torch.Tensor:
    """Batched cosine similarity: a (B,M,W), b (B,R,W) -> (B,R,M), ``a·b / (|a| |b| + δ)``
    with the ``normBy``-norm (2: ``mann.addressing.cosine_similarity``)."""
    if normBy == 2:
        return addressing.cosine_similarity(a, b)
    dot = torch.bmm(b, a.transpose(1, 2))
    norms = b.norm(normBy, dim=2).unsqueeze(2) * a.norm(normBy, dim=2).unsqueeze(1)
    return dot / (norms + δ)


def σ(input: torch.Tensor, axis: int = 1) -> torch.Tensor:
    """Softmax along ``axis``."""
    return torch.softmax(input, dim=axis)


def ptr(tensor):
    """The address of a tensor's storage (anything else is returned as it is)."""
    if isinstance(tensor, torch.Tensor):
        return tensor.untyped_storage().data_ptr()
    return tensor


def ensure_gpu(tensor, gpu_id: int):
    """A tensor or numpy array on CUDA device ``gpu_id`` (``-1``: the CPU); anything else as
    it is."""
    if isinstance(tensor, np.ndarray):
        tensor = torch.from_numpy(tensor)
    if isinstance(tensor, torch.Tensor):
        return tensor.to(_device(gpu_id))
    return tensor


def check_nan_gradient(name: str = ""):
    """A tensor hook that prints when a gradient's mean is NaN."""

    def hook(gradient: torch.Tensor) -> None:
        if torch.isnan(gradient.float().mean()):
            print(f"\nnan gradient of {name} :")

    return hook


def apply_var(v, k: str) -> None:
    """Register ``check_nan_gradient(k)`` on ``v`` if it is a tensor that requires grad."""
    if isinstance(v, torch.Tensor) and v.requires_grad:
        v.register_hook(check_nan_gradient(k))


def apply_dict(dic: dict) -> None:
    """``apply_var`` on each value of ``dic``, and on the tensors and parameters of each
    module in it."""
    for key, value in dic.items():
        apply_var(value, key)
        if isinstance(value, nn.Module):
            for name in dir(value):
                if not name.startswith("__"):
                    apply_var(getattr(value, name, None), name)
            for name, parameter in value._parameters.items():
                apply_var(parameter, name)


def register_nan_checks(model: nn.Module) -> None:
    """Print the module's type whenever a gradient entering one of its modules is all NaN."""

    def check_grad(module, grad_input, grad_output) -> None:
        if any(g is not None and bool(torch.isnan(g).all()) for g in grad_input):
            print("NaN gradient in grad_input " + type(module).__name__)

    model.apply(lambda module: module.register_full_backward_hook(check_grad))


def print_gradient(x: torch.Tensor, name: str) -> None:
    """Print ``x``'s gradient, under ``name``, whenever one is computed."""
    banner = "Gradient of " + name + " ----------------------------------"
    x.register_hook(lambda gradient: print(banner, gradient.squeeze()))


def recursiveTrace(obj) -> None:
    """Print the autograd graph behind ``obj``, one node per line, depth first."""
    node = obj.grad_fn if isinstance(obj, torch.Tensor) else obj
    print(type(obj))
    seen = set()

    def walk(node, depth: int) -> None:
        if node is None or node in seen:
            return
        seen.add(node)
        print("  " * depth + type(node).__name__)
        for child, _ in getattr(node, "next_functions", ()):
            walk(child, depth + 1)

    walk(node, 0)
