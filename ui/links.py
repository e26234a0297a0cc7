"""A link to any view: the page's state in the URL's query, restored from it on arrival.

The query keys: ``model`` (a checkpoint name such as ``dnc-copy``, or ``untrained:dnc``),
``task`` (the task an untrained model is sized for), ``length``, ``seed``, ``rounds``
(multi-copy), ``step`` (the time step shown), ``head`` (Explain), ``models`` (comma-separated,
Compare and Patterns), ``preset`` (What if: the preset's number, from 1) or ``interventions``
(What if: the list as JSON), ``fit`` and ``large`` (1: fit a 1280×720 screen,
large figure text). ``restore`` runs once per browser session, before any widget, and sets
the widgets' session keys from the query; a bad or unknown value is reported and skipped (the
page uses its default). ``link_box`` writes the page's current state back into the query and
shows the link to copy.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import streamlit as st

from ui import choosing, sidebar

RESTORED = "url_restored"  # session key: the query was read
PROBLEMS = "url_problems"  # session key: what in it could not be used
# What pages pick up themselves.
STEP, HEAD, MODELS = "url_step", "url_head", "url_models"
PRESET, INTERVENTIONS = "url_preset", "url_interventions"


def _model_key(value: str) -> str | None:
    keys = choosing.model_keys()
    for key in (value, f"checkpoint:{value}"):
        if key in keys:
            return key
    return None


def _integer(name: str, value: str, minimum: int, problems: list[str]) -> int | None:
    try:
        number = int(value)
    except ValueError:
        problems.append(f"{name}={value!r} is not a whole number")
        return None
    if number < minimum:
        problems.append(f"{name}={number} must be at least {minimum}")
        return None
    return number


def restore() -> None:
    """Take the view from the URL's query, once per browser session (see the module doc)."""
    if st.session_state.get(RESTORED):
        return
    st.session_state[RESTORED] = True
    query = st.query_params.to_dict()
    problems: list[str] = []
    model = query.get("model")
    if model is not None:
        key = _model_key(model)
        if key is None:
            problems.append(f"model={model!r} is not available here")
        else:
            st.session_state["model_key"] = key
    task_name = query.get("task")
    if task_name is not None:
        if task_name in choosing.TASK_NAMES:
            st.session_state["untrained_task"] = task_name
        else:
            problems.append(f"task={task_name!r} is not one of {', '.join(choosing.TASK_NAMES)}")
    try:
        task = choosing.selected().task
    except ValueError as error:
        problems.append(str(error))
        task = None
    if "seed" in query:
        seed = _integer("seed", query["seed"], 0, problems)
        if seed is not None:
            st.session_state["input_seed"] = seed
    if "length" in query and task is not None:
        length = _integer("length", query["length"], 1, problems)
        low, high, _ = choosing.length_bounds(task.name, choosing.task_json(task))
        if length is not None and not low <= length <= high:
            problems.append(f"length={length} must lie in {low}..{high} for {task.name}")
        elif length is not None:
            st.session_state[f"length:{task.name}"] = length
    if "rounds" in query and task is not None:
        rounds = _integer("rounds", query["rounds"], 1, problems)
        if rounds is not None and not hasattr(task, "with_rounds"):
            problems.append(f"rounds: task {task.name!r} has no rounds")
        elif rounds is not None:
            if rounds > choosing.rounds_bound(task):
                problems.append(f"rounds={rounds} must be at most {choosing.rounds_bound(task)}")
            else:
                st.session_state[f"rounds:{task.name}"] = rounds
    for name, key in (("fit", sidebar.FIT_KEY), ("large", sidebar.LARGE_TEXT_KEY)):
        if name in query:
            if query[name] in ("1", "0"):
                st.session_state[key] = query[name] == "1"
            else:
                problems.append(f"{name}={query[name]!r} must be 1 (on) or 0 (off)")
    if "step" in query:
        step = _integer("step", query["step"], 0, problems)
        if step is not None:
            st.session_state[STEP] = step
    if "head" in query:
        st.session_state[HEAD] = query["head"]
    if "preset" in query:
        preset = _integer("preset", query["preset"], 1, problems)
        if preset is not None:
            st.session_state[PRESET] = preset
    if "interventions" in query:
        st.session_state[INTERVENTIONS] = query["interventions"]  # the page checks them
    if "models" in query:
        wanted = [name.strip() for name in query["models"].split(",") if name.strip()]
        keys = [_model_key(name) for name in wanted]
        for name, key in zip(wanted, keys, strict=True):
            if key is None:
                problems.append(f"models: {name!r} is not available here")
        st.session_state[MODELS] = [key for key in keys if key is not None]
    st.session_state[PROBLEMS] = problems


def show_problems() -> None:
    """What of the link could not be used, once, at the top of the first page."""
    problems = st.session_state.pop(PROBLEMS, None)
    if problems:
        st.warning("Parts of this link could not be used, so the page shows its defaults "
                   "there: " + "; ".join(problems) + ".", icon=":material/link_off:")


def step_from_link(steps: int) -> int | None:
    """The ``step`` of the link, if it lies within a trace of ``steps`` steps."""
    step = st.session_state.get(STEP)
    return step if step is not None and 0 <= step < steps else None


def models_from_link(options: list[str]) -> list[str] | None:
    """The ``models`` of the link that are among ``options`` (None without any)."""
    keys = [key for key in st.session_state.get(MODELS) or [] if key in options]
    return keys or None


def _model_name(key: str) -> str:
    kind, _, name = key.partition(":")
    return name if kind == "checkpoint" else key


def view_query(**page: Any) -> dict[str, str]:
    """The query of the current view: the sidebar's model and input, then ``page``'s own
    values (None leaves a key out)."""
    query: dict[str, str] = {}
    key = st.session_state.get("model_key")
    if key and not key.startswith("session:"):  # a visitor's own model has no link
        query["model"] = _model_name(key)
        if key.startswith("untrained:"):
            query["task"] = st.session_state.get("untrained_task", "copy")
    try:
        choice = choosing.selected()
        chosen = choosing.current_input(choice)
    except ValueError:
        chosen = None
    if chosen is not None:
        query["length"] = str(chosen.length)
        query["seed"] = str(chosen.seed)
        if hasattr(choice.task, "with_rounds"):
            query["rounds"] = str(st.session_state.get(f"rounds:{choice.task.name}",
                                                       choice.task.max_rounds))  # fmt: skip
    screen = sidebar.display()
    if screen.fit:
        query["fit"] = "1"
    if screen.large_text:
        query["large"] = "1"
    for name, value in page.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            value = ",".join(_model_name(item) for item in value)
        query[name] = str(value)
    return query


def link_box(steps: int | None = None, **page: Any) -> None:
    """Write the view into the URL and show it, to copy: "Link to this view". With ``steps``
    (a trace's length) the link also opens at a step the user picks (a slider that moves in
    the browser cannot tell the server where it is)."""
    with st.expander("Link to this view", icon=":material/link:"):
        if steps is not None:
            page["step"] = st.number_input(
                "the link opens at step", 0, steps - 1, page.get("step") or 0,
                key=f"link_step:{steps}",
            )
        query = view_query(**page)
        st.query_params.from_dict(query)
        base = urlsplit(st.context.url or "")
        link = urlunsplit((base.scheme, base.netloc, base.path, urlencode(query), ""))
        st.caption("Opens this page with this model, input and view (the copy button is at "
                   "the right of the box). A model you uploaded or trained here is not in it.")
        st.code(link, language=None)
