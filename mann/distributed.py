"""Training on several processes: the processes ``torchrun`` starts, and what they share.

``torchrun --nproc-per-node N -m mann train ...`` starts N processes and gives each the
variables RANK, WORLD_SIZE and LOCAL_RANK (and the address of rank 0). ``distributed_training``
joins them into one ``torch.distributed`` process group (gloo on the CPU, NCCL on GPUs);
``mann.train`` then wraps the model in ``DistributedDataParallel`` and asks ``World`` which
rank it is and for the few sums the ranks must agree on (the loss, the curriculum's
statistic, a stop). Nothing here is needed by a run of one process: ``World.current()`` is
then rank 0 of 1, and ``distributed_training`` starts nothing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from mann.devices import resolve_device

# The variables torchrun sets in every process it starts.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
# Rank r draws its batches from seed + r * RANK_SEED_STRIDE: rank 0 from the run's own seed
# (so one process trains exactly as it always has), the others far from any nearby seed.
RANK_SEED_STRIDE = 1_000_000_007


@dataclass(frozen=True)
class World:
    """The processes training together: this one's ``rank`` among ``size`` (1: alone)."""

    rank: int = 0
    size: int = 1

    @classmethod
    def current(cls) -> World:
        """The running ``torch.distributed`` process group's, or one process alone."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    def state_name(self, name: str) -> str:
        """The name of this rank's random state ``name`` in the training state: rank 0's is
        ``name`` (as a run of one process saves it), rank r's ``name.rank<r>``."""
        return name if self.rank == 0 else f"{name}.rank{self.rank}"

    def sum(self, *values: float) -> list[float]:
        """The sums over the ranks of ``values`` (float64), the same on every rank."""
        totals = torch.tensor(values, dtype=torch.float64, device=_collective_device())
        dist.all_reduce(totals)
        return totals.tolist()

    def gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's ``tensor`` (same shape on all), by rank, on the CPU."""
        local = tensor.to(_collective_device())
        gathered = [torch.empty_like(local) for _ in range(self.size)]
        dist.all_gather(gathered, local)
        return [value.cpu() for value in gathered]


def _collective_device() -> torch.device:
    # NCCL moves CUDA tensors only; gloo CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def batch_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s batch generator in a run seeded ``seed`` (rank 0: ``seed``)."""
    return seed + rank * RANK_SEED_STRIDE


def launcher(world_size: int) -> list[str]:
    """The start of a command that runs ``mann`` on ``world_size`` processes of one machine
    (the ranks, not the machines, decide every batch, so one machine reproduces a run of
    several)."""
    if world_size == 1:
        return ["python", "-m", "mann"]
    return ["torchrun", "--nproc-per-node", str(world_size), "-m", "mann"]


def torchrun_ranks() -> tuple[int, int, int] | None:
    """``(rank, world size, local rank)`` from the variables torchrun sets in every process it
    starts (RANK, WORLD_SIZE, LOCAL_RANK), or None when they are not all set.

    Raises:
        ValueError: one of them is not an integer.
    """
    if not all(name in os.environ for name in TORCHRUN_VARIABLES):
        return None
    try:
        rank, world_size, local_rank = (int(os.environ[name]) for name in TORCHRUN_VARIABLES)
    except ValueError:
        values = ", ".join(f"{name}={os.environ[name]!r}" for name in TORCHRUN_VARIABLES)
        raise ValueError(f"torchrun's variables must be integers, got {values}") from None
    return rank, world_size, local_rank


@contextlib.contextmanager
def distributed_training(device: str | torch.device | None) -> Iterator[torch.device]:
    """Join the processes torchrun started, and yield this process's device.

    Under torchrun with more than one process (``torchrun_ranks``), start the default
    process group from torchrun's variables, by NCCL when ``device`` is CUDA (each process
    takes GPU ``LOCAL_RANK`` of its machine) and by gloo on the CPU, and end it on the way
    out. Alone, or when the caller has started a process group already, start nothing.

    Raises:
        ValueError: as ``resolve_device``, or a GPU ``LOCAL_RANK`` this machine lacks.
    """
    device = resolve_device(device)
    ranks = torchrun_ranks()
    if ranks is None or ranks[1] == 1 or dist.is_initialized():
        yield device
        return
    _, _, local_rank = ranks
    if device.type == "cuda":
        device = resolve_device(torch.device("cuda", local_rank))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    try:
        yield device
    finally:
        dist.destroy_process_group()
