"""One exception type for everything a user can fix.

The CLI turns a `VitxError` into a one-line message and a non-zero exit code; any other
exception is a bug in vitx and keeps its traceback.
"""
import difflib
from typing import Iterable


class VitxError(Exception):
    """A problem with the user's input or environment, with a message that says how to fix it."""


def suggest(name: str, candidates: Iterable[str], n: int = 3) -> str:
    """' Did you mean: a, b?' for the closest candidates, or '' when none is close."""
    matches = difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.6)
    return f" Did you mean: {', '.join(matches)}?" if matches else ""


def printable(text) -> str:
    """`text` (a path, say) as valid UTF-8 for a terminal, a page or a log: bytes of a file
    name that are not UTF-8 (which Python holds as surrogates) are shown as \\xNN escapes."""
    return str(text).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
