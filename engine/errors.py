"""The one exception type that means "the user gave us something we cannot use"."""

__all__ = ["UserError"]


class UserError(Exception):
    """Bad input the user can fix.

    The CLI prints it as a single line on stderr and exits with status 2; the
    pages show it with ``st.error``. The message must say what is wrong and what
    to do about it.
    """
