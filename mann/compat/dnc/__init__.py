"""A drop-in for the ``dnc`` package (ixaxaar/pytorch-dnc 1.1.0) on this library's memories.

``DNC``, ``SAM`` and ``SDNC`` take 1.1.0's constructor arguments (in its order), are called as
1.1.0's, and return its structures; the memory is this library's (``mann.access.dnc``,
``sam``, ``sdnc``). To run a script written for the package unchanged, add one line before
it imports ``dnc``::

    import mann.compat.dnc; mann.compat.dnc.install()

after which ``import dnc``, ``from dnc import DNC, SAM, SDNC`` and ``dnc.dnc``, ``dnc.sam``,
``dnc.sdnc`` and ``dnc.util`` are these modules. docs/coming-from-dnc.md lists every
deliberate difference from 1.1.0.
"""

from __future__ import annotations

import sys
import types

from mann.compat.dnc import adapters, dnc, sam, sdnc, util
from mann.compat.dnc.dnc import DNC
from mann.compat.dnc.sam import SAM
from mann.compat.dnc.sdnc import SDNC

__all__ = ["DNC", "SAM", "SDNC", "install", "uninstall"]

PACKAGE_NAME = "dnc"
_SUBMODULES = {"dnc": dnc, "sam": sam, "sdnc": sdnc, "util": util, "adapters": adapters}

# What ``install`` replaced in sys.modules, for ``uninstall``: name -> module (None: absent).
_replaced: dict[str, types.ModuleType | None] = {}


def _installed_names() -> list[str]:
    return [PACKAGE_NAME, *(f"{PACKAGE_NAME}.{name}" for name in _SUBMODULES)]


def install() -> None:
    """Make ``import dnc`` (and ``dnc.dnc``, ``dnc.sam``, ``dnc.sdnc``, ``dnc.util``) give
    this compat layer, through ``sys.modules``, for the rest of the process.

    Call it before anything imports ``dnc``: a name already bound to the real package stays
    bound. Submodules of a real ``dnc`` imported earlier (``dnc.memory``, …) are dropped from
    ``sys.modules``, so they are not mixed with these. ``uninstall`` undoes it.
    """
    package = sys.modules[__name__]
    if sys.modules.get(PACKAGE_NAME) is package:
        return
    stale = [name for name in sys.modules if name.startswith(PACKAGE_NAME + ".")]
    for name in stale + _installed_names():
        if name not in _replaced:
            _replaced[name] = sys.modules.get(name)
    for name in stale:
        del sys.modules[name]
    sys.modules[PACKAGE_NAME] = package
    for name, module in _SUBMODULES.items():
        sys.modules[f"{PACKAGE_NAME}.{name}"] = module


def uninstall() -> None:
    """Undo ``install``: ``sys.modules`` holds again what it held for ``dnc`` before."""
    for name in _installed_names():
        sys.modules.pop(name, None)
    for name, module in _replaced.items():
        if module is not None:
            sys.modules[name] = module
    _replaced.clear()
