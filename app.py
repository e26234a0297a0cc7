"""Streamlit entry point: ``streamlit run app.py``.

Navigation over the pages in pages/, and the sidebar they share (model and input). Each page
composes: it picks through ui.choosing and ui.results, calls mann, and hands the Trace to
mann.figures.
"""

import streamlit as st

from ui import choosing, links, server, sidebar

st.set_page_config(
    page_title="mann: watch memory-augmented networks at work",
    page_icon=":material/memory:",
    layout="wide",
)

navigation = st.navigation(
    [
        st.Page(server.PAGES["home"], title="Home", icon=":material/home:", default=True),
        st.Page(server.PAGES["learn"], title="Learn", icon=":material/school:",
                url_path="learn"),
        st.Page(server.PAGES["inspect"], title="Inspect", icon=":material/grid_on:",
                url_path="inspect"),
        st.Page(server.PAGES["explain"], title="Explain", icon=":material/functions:",
                url_path="explain"),
        st.Page(server.PAGES["compare"], title="Compare", icon=":material/compare:",
                url_path="compare"),
        st.Page(server.PAGES["train"], title="Train", icon=":material/model_training:",
                url_path="train"),
        st.Page(server.PAGES["generalisation"], title="Generalisation",
                icon=":material/show_chart:", url_path="generalisation"),
        st.Page(server.PAGES["whatif"], title="What if", icon=":material/science:",
                url_path="whatif"),
        st.Page(server.PAGES["patterns"], title="Patterns", icon=":material/scatter_plot:",
                url_path="patterns"),
        st.Page(server.PAGES["export"], title="Export", icon=":material/download:",
                url_path="export"),
    ]
)
server.kernel_warm_up()  # once per server: numba compiles while the first page is read
# An upload is checked before the page runs, so the page already shows the uploaded model.
choosing.take_pending_upload()
links.restore()  # a link's view (model, input, step, ...) before any widget is drawn
with server.inside_app():
    links.show_problems()
    navigation.run()
# The sidebar comes after the page: its widgets' values reach the page all the same (they are
# read from the session at the start of the run), and the page's first lines show without
# waiting for the sidebar's checkpoint loading. Pages end by returning, never by st.stop(),
# so the sidebar is always drawn.
sidebar.draw()
sidebar.display_controls()
server.freeze_long_lived_objects()  # once, after the first run's imports
