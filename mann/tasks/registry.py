"""Tasks by name: the table a command line or a checkpoint's JSON config resolves names with.

A task's options round-trip through plain data:
``make_task(task.name, **dataclasses.asdict(task)) == task``.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from mann.tasks.adding import AddingTask
from mann.tasks.argmax import ArgmaxTask
from mann.tasks.associative_recall import AssociativeRecallTask
from mann.tasks.base import Task
from mann.tasks.copy import CopyTask
from mann.tasks.multi_copy import MultiCopyTask
from mann.tasks.ngrams import NGramsTask
from mann.tasks.priority_sort import PrioritySortTask
from mann.tasks.repeat_copy import RepeatCopyTask

TASKS: dict[str, type] = {
    task_class.name: task_class
    for task_class in (
        CopyTask,
        RepeatCopyTask,
        AssociativeRecallTask,
        PrioritySortTask,
        AddingTask,
        ArgmaxTask,
        MultiCopyTask,
        NGramsTask,
    )
}


def make_task(name: str, **options: Any) -> Task:
    """The task called ``name``, made with ``options`` (its dataclass fields; others default).

    Raises:
        ValueError: for an unknown name (listing the known ones), an unknown option (listing
            the task's options), or an option value the task rejects.
    """
    if name not in TASKS:
        known = ", ".join(sorted(TASKS))
        raise ValueError(f"unknown task {name!r}; known tasks: {known}")
    task_class = TASKS[name]
    allowed = [option.name for option in dataclasses.fields(task_class) if option.init]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for task {name!r}; "
            f"its options are: {', '.join(allowed)}"
        )
    return task_class(**options)


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """``["bits=6", "name=x"]`` -> ``{"bits": 6, "name": "x"}`` (the command line's
    ``--task-option`` and the Train page's task options): values are read as JSON when they can
    be, else kept as text."""
    options = {}
    for pair in pairs:
        key, separator, text = pair.partition("=")
        if not separator or not key.strip():
            raise ValueError(f"a task option must look like KEY=VALUE, got {pair!r}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        options[key.strip()] = value
    return options
