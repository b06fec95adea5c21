"""The Streamlit side: state shared by the pages (``app.state``). Pages live in ``pages/``, the frame in streamlit_app.py."""

__all__: list[str] = []
