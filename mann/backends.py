"""Which implementation runs a model: the pure-torch reference or a registered fused kernel.

- ``"reference"``: the model's time loop over its memory's reference ``step``, every equation
  called through ``mann.addressing`` (so an edit or a patch of an equation there reaches
  training and recording alike), pure torch on any device; SAM's and SDNC's k-NN search
  stays faiss's.
- ``"fused"``: the kernel registered for exactly the model's access class (``mann.fused``:
  the whole sequence as one autograd node with hand-written backward); a model it cannot run
  raises ``BackendError`` naming what is missing.
- ``"auto"`` (the default): fused where a kernel is registered for exactly this access class
  and takes this configuration, input and device; otherwise the reference. A subclass of
  ``DNCAccess`` runs the reference unless it registers a kernel of its own.

Recording a Trace and running with interventions always take the reference.

    with mann.backend("reference"):
        model(inputs)                   # pure torch
    mann.backend_for(model)             # "fused" or "reference": what a call would use

The default comes from the environment variable ``MANN_BACKEND`` when it is set.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

BACKENDS = ("reference", "fused", "auto")
ENVIRONMENT_VARIABLE = "MANN_BACKEND"


class BackendError(ValueError):
    """The chosen backend cannot run this model (names the backend and what is missing)."""


@dataclass(frozen=True)
class Kernel:
    """A fused implementation of a whole sequence for one access class.

    ``missing(model, inputs, state)`` says why it cannot run this call (None when it can);
    ``run(model, inputs, state)`` returns ``(logits, controller state, access state fields,
    read vectors)`` as the reference loop computes them.
    """

    name: str
    missing: Callable[[Any, Any, Any], str | None]
    run: Callable[[Any, Any, Any], tuple]


_KERNELS: dict[type, Kernel] = {}
_KERNELS_LOADED = False


def register(access_class: type, kernel: Kernel) -> None:
    """Make ``kernel`` the fused implementation of models whose memory is exactly
    ``access_class`` (not its subclasses)."""
    _KERNELS[access_class] = kernel


def registered() -> dict[type, Kernel]:
    """The registered kernels by access class (importing ``mann.fused`` registers them)."""
    global _KERNELS_LOADED
    if not _KERNELS_LOADED:
        _KERNELS_LOADED = True
        import mann.fused  # noqa: F401  (registers the kernels)
    return dict(_KERNELS)


def _check(name: str) -> str:
    if name not in BACKENDS:
        raise BackendError(f"backend must be one of {list(BACKENDS)}, got {name!r}")
    return name


def _from_environment() -> str:
    name = os.environ.get(ENVIRONMENT_VARIABLE, "auto").strip() or "auto"
    if name not in BACKENDS:
        raise BackendError(
            f"{ENVIRONMENT_VARIABLE} must be one of {list(BACKENDS)}, got {name!r}"
        )
    return name


_ACTIVE: contextvars.ContextVar[str | None] = contextvars.ContextVar("mann_backend", default=None)


def active() -> str:
    """The backend in force: the innermost ``backend(...)`` block's, else ``MANN_BACKEND``'s,
    else "auto"."""
    return _ACTIVE.get() or _from_environment()


@contextlib.contextmanager
def backend(name: str) -> Iterator[str]:
    """Run the enclosed calls with backend ``name`` ("reference", "fused" or "auto")."""
    token = _ACTIVE.set(_check(name))
    try:
        yield name
    finally:
        _ACTIVE.reset(token)


def kernel_for(model: Any, inputs: Any = None, state: Any = None) -> Kernel | None:
    """The kernel a call of ``model`` on ``inputs`` from ``state`` would run under the active
    backend: None means the reference.

    Raises:
        BackendError: the backend is "fused" and no registered kernel can run the call.
    """
    name = active()
    if name == "reference":
        return None
    access_class = type(model.access)
    kernel = registered().get(access_class)
    if kernel is None:
        reason = (f"no fused kernel is registered for {access_class.__name__}"
                  f" (kernels: {', '.join(c.__name__ for c in _KERNELS) or 'none'})")  # fmt: skip
    else:
        reason = kernel.missing(model, inputs, state)
    if reason is None:
        return kernel
    if name == "fused":
        raise BackendError(f"backend 'fused' cannot run this {model.config.arch} model: {reason}")
    return None


def backend_for(model: Any, inputs: Any = None, state: Any = None) -> str:
    """"fused" or "reference": what a call of ``model`` (on ``inputs``, from ``state``, when
    given) would use under the active backend, recording and interventions aside."""
    return "reference" if kernel_for(model, inputs, state) is None else "fused"
