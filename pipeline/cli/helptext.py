"""Help text from docstrings: typer's rich mode keeps single newlines, so paragraphs are re-flowed here."""

from __future__ import annotations

import inspect
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)


def reflow(text: str) -> str:
    """Join the lines of each paragraph; paragraphs stay separated by a blank line."""
    return "\n\n".join(" ".join(p.split()) for p in inspect.cleandoc(text).split("\n\n"))


def reflowed(fn: F) -> F:
    """Decorator: re-flow a command function's docstring for `--help`."""
    if fn.__doc__:
        fn.__doc__ = reflow(fn.__doc__)
    return fn
