"""Export: the trace as .npz and CSV, and the scrubbable figure as one offline HTML file."""

import pandas as pd
import streamlit as st

from mann import figures
from ui import links, results, server

server.page_needs_app()


def main() -> None:
    st.title("Export")
    st.caption("What the sidebar's model recorded on the sidebar's input (hand edits included).")
    current = results.current()
    if current is None:
        return
    choice, chosen, trace = current
    key = results.trace_key(choice, chosen)
    label = choice.label.replace(" ", "_").replace(":", "")
    stem = f"{label}-{chosen.task_name}-{chosen.length}"

    def trace_csv() -> str:
        return trace.to_frame().to_csv(index=False)

    def scrub_html() -> str:
        return figures.figure_html(results.figure("scrub_figure", key, trace))

    def timeline_html() -> str:
        return figures.figure_html(results.figure("timeline_figure", key, trace))

    def animation(suffix: str):
        return lambda: results.animation_bytes(key, trace, suffix)

    # A download changes nothing on the page, so it does not rerun it (a rerun rebuilt the
    # page's figures, and a click during it could be lost).
    first, second = st.columns(2)
    with first:
        st.download_button(
            "Trace (.npz)", data=trace.to_bytes(), file_name=f"{stem}.npz",
            mime="application/octet-stream", icon=":material/data_array:", on_click="ignore",
            help="numpy arrays, one per field; load with mann.Trace.load (no pickles).",
        )
        st.download_button(
            "Trace (CSV, one row per number)", data=trace_csv, file_name=f"{stem}.csv",
            mime="text/csv", icon=":material/table:", on_click="ignore",
            help="Columns signal, step, head, slot, index, value (Trace.to_frame).",
        )
    with second:
        st.download_button(
            "Scrubbable figure (HTML, works offline)", data=scrub_html,
            file_name=f"{stem}-scrub.html", mime="text/html", icon=":material/animation:",
            on_click="ignore",
            help="plotly.js is embedded: the file opens without a network.",
            disabled=not figures.fits_in_browser(trace),
        )
        st.download_button(
            "Timeline figure (HTML, works offline)", data=timeline_html,
            file_name=f"{stem}-timeline.html", mime="text/html",
            icon=":material/view_timeline:", on_click="ignore",
        )
    st.subheader("For slides")
    st.caption("The scrub view as an animation, one frame per step at 4 frames a second, "
               "1280×720: memory, weightings, links and the input / target / output strip.")
    first, second = st.columns(2)
    first.download_button(
        "Animation (GIF)", data=animation(".gif"), file_name=f"{stem}.gif", mime="image/gif",
        icon=":material/gif_box:", on_click="ignore",
        help="Plays in any slide program and browser.",
    )
    second.download_button(
        "Animation (MP4)", data=animation(".mp4"), file_name=f"{stem}.mp4", mime="video/mp4",
        icon=":material/movie:", on_click="ignore", help="Smaller than the GIF; H.264.",
    )

    st.subheader("What the trace holds")
    rows = [
        {"field": name, "shape": " × ".join(str(n) for n in getattr(trace, name).shape)}
        for name in trace.available()
    ]
    st.dataframe(pd.DataFrame(rows), hide_index=True, height=35 * (len(rows) + 1) + 3)


main()
links.link_box()
