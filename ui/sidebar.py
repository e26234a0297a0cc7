"""The sidebar every page shares (which model, which input, how to display) and the pages'
headings, which fitting a projector's screen shortens to one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath

import streamlit as st

from ui import choosing


def draw() -> None:
    """Model and input choice, shared by every page (drawn by app.py before the page)."""
    keys = choosing.model_keys()
    if not keys:
        st.sidebar.error("No model: no checkpoints and no memory modules were found.")
        return
    if st.session_state.get("model_key") not in keys:
        st.session_state["model_key"] = keys[0]
    with st.sidebar:
        st.subheader("Model")
        st.selectbox("model", keys, format_func=choosing.model_label, key="model_key",
                     label_visibility="collapsed")
        if st.session_state["model_key"].startswith("untrained:"):
            st.selectbox("sized for task", choosing.TASK_NAMES, key="untrained_task")
            st.caption("Random weights: the mechanics are real, the behaviour is not learned.")
        with st.expander("Upload a checkpoint"):
            st.file_uploader(
                "NAME.safetensors", type=["safetensors"], key="upload",
                on_change=choosing.on_upload,
                help="A checkpoint written by mann.save or the trainer (at most 50 MB).",
            )
            if "upload_error" in st.session_state:
                st.error(st.session_state["upload_error"])
        try:
            choice = choosing.selected()
        except ValueError as error:
            st.error(str(error))
            return
        st.caption(_describe(choice))
        st.subheader("Input")
        task = choice.task
        from mann.inputs import length_label

        low, high, default = choosing.length_bounds(task.name, choosing.task_json(task))
        # Defaults through st.session_state: a link (ui.links) may have set these keys already.
        st.session_state.setdefault(f"length:{task.name}", default)
        st.number_input(
            f"{length_label(task)} ({task.name.replace('_', ' ')})", min_value=low,
            max_value=high, step=1, key=f"length:{task.name}",
        )
        if hasattr(task, "with_rounds"):
            st.session_state.setdefault(f"rounds:{task.name}", task.max_rounds)
            st.number_input("rounds (copy rounds in the episode)", min_value=1,
                            max_value=choosing.rounds_bound(task), step=1,
                            key=f"rounds:{task.name}")  # fmt: skip
        st.session_state.setdefault("input_seed", 0)
        st.number_input("seed", min_value=0, max_value=2**31 - 1, step=1, key="input_seed")


FIT_KEY, LARGE_TEXT_KEY = "display_fit", "display_large_text"


SCREEN = (1280, 720)  # what "fit" fits: a common projector


@dataclass(frozen=True)
class Display:
    """How the pages draw: ``fit`` a 1280×720 screen (the main figure and what it needs above
    it, without scrolling) and ``large_text`` (figure text 1.5 times its size)."""

    fit: bool = False
    large_text: bool = False

    @property
    def text_scale(self) -> float:
        return 1.5 if self.large_text else 1.0

    def height(self, fitted: int) -> int | None:
        """The main figure's height: ``fitted`` pixels when fitting the screen, else its own."""
        return fitted if self.fit else None


def display() -> Display:
    return Display(bool(st.session_state.get(FIT_KEY)), bool(st.session_state.get(LARGE_TEXT_KEY)))


def display_controls() -> None:
    """The sidebar's display toggles, and, when fitting the screen, less empty space above
    the page (Streamlit leaves 6rem)."""
    with st.sidebar:
        st.subheader("Display")
        st.toggle(f"fit a {SCREEN[0]}×{SCREEN[1]} screen", key=FIT_KEY,
                  help="For a projector: the page's main figure fits the window without "
                  "scrolling; explanations and controls move below it.")  # fmt: skip
        st.toggle("large text", key=LARGE_TEXT_KEY,
                  help="Figure text at 1.5 times its size, readable from the back of a room.")
    if display().fit:
        st.html("<style>[data-testid='stMainBlockContainer']"
                "{padding-top: 3.2rem; padding-bottom: 1rem}</style>")


def heading(title: str, caption: str, summary: str = "") -> None:
    """A page's title and what it shows; one line (title and ``summary``) when fitting."""
    if display().fit:
        st.markdown(f"**{title}**" + (f" · {summary}" if summary else ""))
    else:
        st.title(title)
        st.caption(caption)


def _describe(choice: choosing.Choice) -> str:
    from mann.catalog import describe

    text = describe(choice.model)
    metrics = choice.metadata.get("metrics") or {}
    if metrics.get("bit_errors") is not None:
        text += f"; trained to {metrics['bit_errors']:.3g} bit errors per sequence"
    if metrics.get("step"):
        text += f" in {metrics['step']} steps"
    init = (choice.metadata.get("train_config") or {}).get("init")
    if init:  # a later stage: its steps count from another run's weights
        text += f", after starting from the weights of {PurePath(init).name}"
    return text + "."
