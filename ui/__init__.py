"""Streamlit helpers shared by the app's pages (the library, ``mann``, has no Streamlit in it)."""
