"""The Streamlit side: state shared by the pages (``app.state``).

The pages live in ``pages/`` and the frame in ``streamlit_app.py``.
"""

__all__: list[str] = []
