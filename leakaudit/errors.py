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


def describe_validation_error(err, where: str, prefix: str = "", top: str = "(top level)") -> str:
    """One line for a pydantic ``ValidationError``: ``where: field 'a.b': message`` (its first error).

    ``prefix`` is put before the field's location (a config nested in a larger file); ``top``
    names the location when the error is about the whole mapping.
    """
    e = err.errors()[0]
    loc = ".".join(str(x) for x in (prefix, *e["loc"]) if x != "") or top
    return f"{where}: field '{loc}': {e['msg'].removeprefix('Value error, ')}"
