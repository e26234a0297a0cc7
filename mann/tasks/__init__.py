"""Algorithmic tasks for memory-augmented networks, one module each.

Every task makes seeded ``Batch(inputs (B,T,X), targets (B,T,Y), mask (B,T))`` of float32
tensors; see ``mann.tasks.base`` for the interface and each module (or docs/tasks.md) for the
exact encoding.
"""

from mann.tasks.adding import AddingTask
from mann.tasks.argmax import ArgmaxTask
from mann.tasks.associative_recall import AssociativeRecallTask
from mann.tasks.base import Batch, Task
from mann.tasks.copy import CopyTask
from mann.tasks.multi_copy import MultiCopyTask
from mann.tasks.ngrams import NGramsTask
from mann.tasks.priority_sort import PrioritySortTask
from mann.tasks.registry import TASKS, make_task
from mann.tasks.repeat_copy import RepeatCopyTask

__all__ = [
    "TASKS",
    "AddingTask",
    "ArgmaxTask",
    "AssociativeRecallTask",
    "Batch",
    "CopyTask",
    "MultiCopyTask",
    "NGramsTask",
    "PrioritySortTask",
    "RepeatCopyTask",
    "Task",
    "make_task",
]
