"""Where a model runs: the device names the command line (``--device``), ``mann.load`` and
``mann.train.train`` accept.

- ``"cpu"`` (the default): the fused kernels (``mann.fused``, numba) where they take the
  model, else the pure-torch reference.
- ``"cuda"`` or ``"cuda:N"``: a GPU, through the pure-torch reference (``mann.backends``
  dispatches there by itself: the kernels take CPU tensors only). SAM's and SDNC's k-NN
  index is then the exact torch index on the GPU (``mann.access.index``).
- ``"auto"``: CUDA where torch sees a GPU, else the CPU.
"""

from __future__ import annotations

import torch

DEVICES = ("cpu", "cuda", "auto")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device ``device`` names: "auto" is CUDA where torch sees a GPU, else the CPU; None
    is the CPU.

    Raises:
        ValueError: an unknown name, or CUDA where torch sees no GPU (or not that many).
    """
    if device is None:
        return torch.device("cpu")
    if isinstance(device, str) and device.strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device.strip().lower() if isinstance(device, str) else device)
    except (RuntimeError, TypeError):
        resolved = None
    if resolved is None or resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu, cuda, cuda:N or auto, got {device!r}")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"{device!s} is not available: torch {torch.__version__} sees no CUDA GPU "
                "here; use cpu, or auto (a GPU where there is one, else the CPU)"
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(
                f"{device!s} is not available: this machine has "
                f"{torch.cuda.device_count()} CUDA GPU(s)"
            )
    return resolved


def device_of(model: torch.nn.Module) -> torch.device:
    """The device of ``model``'s parameters (the CPU for a model without any)."""
    parameter = next(model.parameters(), None)
    return torch.device("cpu") if parameter is None else parameter.device
