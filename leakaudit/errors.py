"""User-facing errors.

Anything the user can fix (a missing file, a bad field, an invalid flag) raises
:class:`LeakauditError` with a one-line message naming the file, field or flag.  The CLI
prints it without a traceback and exits with code 2.
"""


class LeakauditError(Exception):
    """A problem with the user's input, reported as one line and exit code 2."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
