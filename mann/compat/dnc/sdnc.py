"""``SDNC`` with the ``dnc`` 1.1.0 package's constructor, call and return values (its
``dnc.sdnc``), on this library's Sparse DNC (``mann.access.sdnc``).

Stacked and called as the compat ``DNC`` (``mann.compat.dnc.dnc``); only the memory differs.
"""

from __future__ import annotations

from torch import nn

from mann.compat.dnc.adapters import SDNCMemory
from mann.compat.dnc.dnc import DNC


class SDNC(DNC):
    """Sparse DNC with the ``dnc`` 1.1.0 package's interface (see ``DNC``)."""

    _defaults = dict(
        DNC._defaults, nr_cells=5000, sparse_reads=4, temporal_reads=4, read_heads=4
    )

    def __init__(
        self,
        input_size,
        hidden_size,
        rnn_type="lstm",
        num_layers=1,
        num_hidden_layers=2,
        bias=True,
        batch_first=True,
        dropout=0,
        bidirectional=False,
        nr_cells=5000,
        sparse_reads=4,
        temporal_reads=4,
        read_heads=4,
        cell_size=10,
        nonlinearity="tanh",
        gpu_id=-1,
        independent_linears=False,
        share_memory=True,
        debug=False,
        clip=20,
    ):
        nn.Module.__init__(self)  # DNC.__init__ would build a DNC memory
        self._configure(locals())
        self._build()

    def _new_memory(self) -> SDNCMemory:
        return SDNCMemory(self.output_size, self.nr_cells, self.cell_size, self.read_heads,
                          self.sparse_reads, self.temporal_reads, self.independent_linears,
                          self.clip)  # fmt: skip
