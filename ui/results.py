"""What the pages compute from a choice, cached for every visitor: traces (``st.cache_data``,
bounded), the built figures (``st.cache_resource``: one object handed to every rerun), what-if
runs, generalisation tables, pattern measurements and animations.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import streamlit as st

from ui import choosing


@st.cache_data(max_entries=32, show_spinner=False)
def _trace(model_key: str, version: str, input_key: str, _model: Any,
           _chosen: choosing.InputChoice) -> Any:
    from mann.inputs import record
    from mann.model import check_fits

    check_fits(_model, choosing.input_task(_chosen))
    return record(_model, choosing.input_batch(_chosen))


def trace_for(choice: choosing.Choice, chosen: choosing.InputChoice) -> Any:
    """The Trace of ``choice``'s model on the chosen input (cached per model version and
    input)."""
    return _trace(choice.key, choice.version, chosen.key, choice.model, chosen)


def trace_key(choice: choosing.Choice, chosen: choosing.InputChoice) -> str:
    return f"{choice.key}|{choice.version}|{chosen.key}"


def current() -> tuple[choosing.Choice, choosing.InputChoice, Any] | None:
    """The chosen model, input and its trace; shows the error and returns None if any fails."""
    try:
        choice = choosing.selected()
        chosen = choosing.current_input(choice)
        return choice, chosen, trace_for(choice, chosen)
    except ValueError as error:
        st.error(str(error))
        return None


@st.cache_resource(max_entries=12, show_spinner=False)
def figure(
    kind: str, key: str, _trace: Any, height: int | None = None, text_scale: float = 1.0,
    **options: Any,
) -> Any:
    """A figure of ``mann.figures`` (``kind`` is its function name) for the trace named ``key``,
    fitted to the screen by ``figures.for_screen(height, text_scale)`` (a figure given a
    height, to fit a screen, drops its title line).

    Cached as a resource: the same figure object is handed to every rerun and every visitor
    (Streamlit copies it when it draws it), so building frames happens once per trace.
    """
    from mann import figures

    built = getattr(figures, kind)(_trace, **options)
    return figures.for_screen(built, height, text_scale, title=height is None)


def measure_patterns(models: dict, task: Any, episodes: int, seed: int, on_progress) -> tuple:
    """``mann.patterns.collect_traces`` (the first 50 episodes whole, the rest slim) and
    their ``mann.patterns.memory_frame``."""
    from mann.patterns import collect_traces, memory_frame

    traces = collect_traces(models, task, episodes, seed, on_progress=on_progress,
                            full_traces=50)
    return traces, memory_frame(traces, task)


@st.cache_data(max_entries=4, show_spinner="Drawing the frames...")
def animation_bytes(key: str, _trace: Any, suffix: str) -> bytes:
    """``mann.figures.save_animation`` of the trace named ``key``, as the file's bytes."""
    import tempfile

    from mann.figures import save_animation

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / f"animation{suffix}"
        save_animation(_trace, path)
        return path.read_bytes()


def interventions_key() -> str:
    """The session's What-if interventions as canonical JSON (part of the result's cache key)."""
    return json.dumps(st.session_state.get("whatif_list", []), sort_keys=True)


@st.cache_data(max_entries=16, show_spinner=False)
def _whatif(model_key: str, version: str, untrained_task: str, input_key: str,
            interventions: str, _chosen: choosing.InputChoice) -> Any:
    from mann.intervention import Intervention
    from mann.model import check_fits
    from mann.whatif import whatif

    choice = choosing.resolve(model_key, untrained_task)
    check_fits(choice.model, choosing.input_task(_chosen))
    listed = [Intervention.from_dict(values) for values in json.loads(interventions)]
    return whatif(choice.model, choosing.input_batch(_chosen), listed)


def whatif_result(choice: choosing.Choice, chosen: choosing.InputChoice) -> Any:
    """``mann.whatif.whatif`` of the chosen model and input with the session's interventions
    (cached per model, input and list)."""
    untrained_task = choice.version if choice.key.startswith("untrained:") else ""
    return _whatif(choice.key, choice.version, untrained_task, chosen.key, interventions_key(),
                   chosen)


@st.cache_resource(max_entries=6, show_spinner=False)
def compare_figure(
    key: str, _traces: tuple, names: tuple[str, ...], step: int = 0,
    height: int | None = None, text_scale: float = 1.0,
) -> Any:
    """``mann.figures.compare_figure``, cached by the traces' keys joined in ``key``, fitted
    to the screen."""
    from mann import figures

    built = figures.compare_figure(list(_traces), list(names), step)
    return figures.for_screen(built, height, text_scale, title=height is None)


def generalisation(
    keys: tuple[str, ...], task_options: str, task_name: str, lengths: tuple[int, ...],
    sequences: int, seed: int,
) -> Any:
    """``mann.evaluate.generalisation_frame`` for the models ``keys`` (cached per model version)."""
    versions = tuple(choosing.resolve(key, task_name).version for key in keys)
    return _generalisation(keys, versions, task_options, task_name, lengths, sequences, seed)


@st.cache_data(max_entries=16, show_spinner=False)
def _generalisation(keys, versions, task_options, task_name, lengths, sequences, seed) -> Any:
    from mann.evaluate import generalisation_frame
    from mann.tasks import make_task

    models = {}
    for key in keys:
        choice = choosing.resolve(key, task_name)
        label = choice.label
        while label in models:  # two uploads of the same file name
            label += "'"
        models[label] = choice.model
    task = make_task(task_name, **json.loads(task_options))
    return generalisation_frame(models, task, list(lengths), sequences, seed)
