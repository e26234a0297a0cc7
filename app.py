"""Streamlit entry point: ``streamlit run app.py``."""

import streamlit as st

st.set_page_config(page_title="mann: memory-augmented networks", layout="wide")
st.title("mann")
st.write("Memory-augmented neural networks you can watch at work. The pages arrive soon.")
