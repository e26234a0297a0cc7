"""What if: replace a quantity of the running memory at chosen steps, rerun, see what changes."""

import json

import numpy as np
import streamlit as st

from mann import figures
from mann.intervention import DESCRIPTIONS, Intervention, describe, intervention_fields
from mann.whatif import presets
from mann.whatif_figures import whatif_figure
from ui import links, results, server, sidebar

server.page_needs_app()

# The session's list of interventions (Intervention.to_dict() each) and the preset it came from.
LIST_KEY = "whatif_list"
PRESET_KEY = "whatif_preset"


def intervention_list() -> list[dict]:
    return st.session_state.setdefault(LIST_KEY, [])


def use_preset(preset, number: int) -> None:
    st.session_state[LIST_KEY] = [i.to_dict() for i in preset.interventions]
    st.session_state[PRESET_KEY] = {"name": preset.name, "prediction": preset.prediction,
                                    "number": number}  # fmt: skip


def from_link(found: list) -> None:
    """A link's preset (its number) or interventions (JSON), once, when it arrives."""
    number = st.session_state.pop(links.PRESET, None)
    listed = st.session_state.pop(links.INTERVENTIONS, None)
    if number is not None:
        if number <= len(found):
            use_preset(found[number - 1], number)
        else:
            st.warning(f"The link's preset={number} does not apply to this model and input "
                       f"({len(found)} presets do).", icon=":material/link_off:")
    elif listed is not None:
        try:
            loaded = json.loads(listed)
            if not isinstance(loaded, list):
                raise ValueError("not a list")
            interventions = [Intervention.from_dict(values) for values in loaded]
        except (ValueError, TypeError, KeyError) as error:
            st.warning(f"The link's interventions could not be read ({error}); the list is "
                       "empty.", icon=":material/link_off:")
        else:
            st.session_state[LIST_KEY] = [i.to_dict() for i in interventions]
            st.session_state.pop(PRESET_KEY, None)


def link_query() -> dict:
    """The What if page's own part of its link: the preset's number, else the list."""
    preset = st.session_state.get(PRESET_KEY)
    if preset is not None:
        return {"preset": preset["number"]}
    listed = intervention_list()
    return {"interventions": json.dumps(listed, separators=(",", ":"))} if listed else {}


def preset_buttons(trace) -> None:
    found = presets(trace)
    from_link(found)
    if not found:
        st.caption("Presets need a copy, multi-copy or priority-sort run of an NTM or a DNC "
                   "(choose one of the shipped models of those tasks in the sidebar), or an NTM "
                   "with a learned initial memory (ntm-ngrams).")
        return
    st.markdown("**Presets** (one click: the interventions replace the list below)")
    columns = st.columns(min(len(found), 3))
    for index, preset in enumerate(found):
        if columns[index % len(columns)].button(preset.name, key=f"preset:{index}"):
            use_preset(preset, index + 1)


def value_inputs(field: str, shape: tuple, key: str):
    """Widgets for a value: three normalised sliders for read modes, one slider per offset for
    an NTM shift (normalised), else one number broadcast over the quantity."""
    if field == "read_modes":
        st.caption("Read modes: the three shares are normalised to sum to 1.")
        columns = st.columns(3)
        raw = [column.slider(name, 0.0, 1.0, default, 0.05, key=f"{key}:{name}")
               for column, name, default in zip(columns, ("backward", "content", "forward"),
                                                (0.0, 1.0, 0.0), strict=True)]  # fmt: skip
        return _normalised(raw)
    if field == "shift":
        offsets = np.arange(shape[-1]) - shape[-1] // 2
        st.caption("Shift distribution over offsets, normalised to sum to 1.")
        columns = st.columns(len(offsets))
        raw = [column.slider(f"{offset:+d}", 0.0, 1.0, 1.0 if offset == 0 else 0.0, 0.05,
                             key=f"{key}:{offset}")
               for column, offset in zip(columns, offsets, strict=True)]  # fmt: skip
        return _normalised(raw)
    return st.number_input("value (every element of the quantity gets it)", value=0.0,
                           step=0.1, format="%.3f", key=f"{key}:value")


def _normalised(raw: list[float]) -> list[float]:
    total = sum(raw)
    return [1.0 / len(raw)] * len(raw) if total <= 0 else [value / total for value in raw]


def builder(model, trace) -> None:
    fields = intervention_fields(model)
    axes = intervention_fields(model.config.arch)
    with st.expander("Add an intervention", icon=":material/add:",
                     expanded=not intervention_list()):  # fmt: skip
        first, second, third = st.columns([2, 1, 1])
        field = first.selectbox("field", list(fields), key="whatif_field",
                                format_func=lambda name: f"{name}: {DESCRIPTIONS[name]}")
        start = second.number_input("from step", 0, trace.steps - 1, 0, key="whatif_start")
        stop = third.number_input("to step", 0, trace.steps - 1, int(start), key="whatif_stop")
        head = slot = None
        picks = st.columns(2)
        head_axis = next((a for a in axes[field] if a in ("head", "read_head", "write_head")),
                         None)  # fmt: skip
        if head_axis is not None:
            count = fields[field][axes[field].index(head_axis)]
            head = picks[0].selectbox(f"{head_axis.replace('_', ' ')}", range(count),
                                      key=f"whatif_head:{field}")  # fmt: skip
        if "slot" in axes[field]:
            choice = picks[1].selectbox(
                "slot (or every slot)", ["every slot", *range(trace.memory_size)],
                key=f"whatif_slot:{field}",
            )
            slot = None if choice == "every slot" else int(choice)
        shape = tuple(size for axis, size in zip(axes[field], fields[field], strict=True)
                      if not (axis == head_axis and head is not None)
                      and not (axis == "slot" and slot is not None))  # fmt: skip
        value = value_inputs(field, shape, key=f"whatif_value:{field}")
        if st.button("Add", icon=":material/add:"):
            step = int(start) if stop <= start else range(int(start), int(stop) + 1)
            intervention_list().append(Intervention(step, field, value, head, slot).to_dict())
            st.session_state.pop(PRESET_KEY, None)
            st.rerun()


def listing() -> list[Intervention]:
    stored = intervention_list()
    interventions = [Intervention.from_dict(values) for values in stored]
    if not interventions:
        st.info("No interventions yet: pick a preset or add one.")
        return []
    st.markdown("**Interventions**")
    for index, intervention in enumerate(interventions):
        left, right = st.columns([6, 1])
        left.code(describe(intervention), language=None)
        if right.button("Remove", key=f"remove:{index}"):
            stored.pop(index)
            st.session_state.pop(PRESET_KEY, None)
            st.rerun()
    if st.button("Clear all", icon=":material/delete:"):
        stored.clear()
        st.session_state.pop(PRESET_KEY, None)
        st.rerun()
    return interventions


# The what-if figure's height when the page fits a 1280×720 screen (a line, the presets and
# the preset's prediction above it).
FIT_HEIGHT = 420


def show_outcome(result, screen: sidebar.Display) -> None:
    """The prediction of the preset in use, the outcome in numbers and the what-if figure."""
    preset = st.session_state.get(PRESET_KEY)
    if preset is not None:
        st.info(f"**{preset['name']}.** {preset['prediction']}", icon=":material/lightbulb:")
    changed = result.steps_with_changed_bits
    figure = whatif_figure(result)
    figures.for_screen(figure, screen.height(FIT_HEIGHT), screen.text_scale, title=not screen.fit)
    if screen.fit:
        st.plotly_chart(figure, key="whatif_figure")
        return
    columns = st.columns(4)
    columns[0].metric("bit errors, as recorded", f"{result.original.metadata['bit_errors']:g}")
    columns[1].metric("bit errors, with interventions",
                      f"{result.intervened.metadata['bit_errors']:g}")
    columns[2].metric(
        "first changed answer", "none" if result.first_changed_bit is None
        else f"step {result.first_changed_bit}",
        help="Outputs of unscored steps may differ earlier: they are no answers. The outputs "
        f"first differ at step {result.first_divergence}." if result.first_divergence is not None
        else "The outputs are identical.",
    )  # fmt: skip
    columns[3].metric("answer steps that changed", len(changed))
    if changed:
        st.caption(f"Answers changed at steps {', '.join(map(str, changed))}.")
    st.plotly_chart(figure, key="whatif_figure")


def show_side_by_side(choice, chosen, result, screen: sidebar.Display) -> None:
    st.caption("Both runs side by side, one slider (the intervened run is the second row):")
    key = f"whatif|{results.trace_key(choice, chosen)}|{results.interventions_key()}"
    st.plotly_chart(
        results.compare_figure(key, (result.original, result.intervened),
                              ("as recorded", "with interventions"),
                              text_scale=screen.text_scale),
        key="whatif_compare",
    )


def main() -> None:
    screen = sidebar.display()
    sidebar.heading(
        "What if",
        "Replace a quantity of the running memory at chosen steps — a gate, a weighting, a "
        "slot of memory, a row of the link matrix — and run the same input again. The model's "
        "weights are never changed. Model and input come from the sidebar.",
    )
    current = results.current()
    if current is None:
        return
    choice, chosen, trace = current
    if not intervention_fields(choice.model):
        st.info("This model has no memory, so there is nothing to intervene in: choose an NTM, "
                "DNC, SAM or SDNC in the sidebar.", icon=":material/info:")
        return
    preset_buttons(trace)
    # Fitting the screen, the outcome comes right after the presets, the editing below it.
    outcome = st.container() if screen.fit else None
    builder(choice.model, trace)
    interventions = listing()
    if not interventions:
        return
    try:
        result = results.whatif_result(choice, chosen)
    except ValueError as error:
        st.error(str(error))
        return
    with outcome if outcome is not None else st.container():
        show_outcome(result, screen)
    show_side_by_side(choice, chosen, result, screen)


main()
links.link_box(**link_query())
