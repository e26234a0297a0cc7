"""Drop-in replacements for other packages' APIs, backed by this library's memories.

- ``mann.compat.dnc``: the ``dnc`` package (ixaxaar/pytorch-dnc 1.1.0): ``DNC``, ``SAM`` and
  ``SDNC`` with its constructors, call and return values; ``mann.compat.dnc.install()`` makes
  ``import dnc`` resolve to it. See docs/coming-from-dnc.md.
"""
