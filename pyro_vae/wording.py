"""Advice in the words of the interface in use.  An error a user can act on says what to change: from Python
that is an argument (``resume=True``, ``TrainConfig(out=...)``), from the command line a flag (``--resume``,
``--out``).  The library raises its errors in Python's words and attaches the command line's as
``cli_message``, which ``pyro-vae`` prints instead (:func:`cli_message`)."""
from typing import Type, TypeVar

E = TypeVar("E", bound=BaseException)


def usage_error(kind: Type[E], python: str, cli: str) -> E:
    """An exception of type ``kind`` whose message is ``python`` (what ``str(error)`` shows) and whose
    ``cli_message`` is ``cli``, the same advice in the command line's flags."""
    error = kind(python)
    error.cli_message = cli
    return error


def cli_message(error: BaseException) -> str:
    """What the command line prints for ``error``: its ``cli_message`` where the library gave one, else its
    message."""
    return getattr(error, "cli_message", None) or str(error)
