"""Where the rich tables of ``status``, ``nodes`` and ``diagnose`` are printed (I/O).

On a terminal rich fits them to its width; piped or redirected, nothing is cut at
80 columns: the console is as wide as :data:`PIPE_WIDTH` (or ``COLUMNS``, when set),
so every row keeps its whole network id, node id, key and address.
"""

from __future__ import annotations

import os
import sys
from typing import Final

from rich.console import Console

#: Columns of the console when the output is not a terminal (tables keep their natural width).
PIPE_WIDTH: Final = 1000


def console() -> Console:
    """A console for stdout: the terminal's width, or :data:`PIPE_WIDTH` when piped."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return Console(width=int(columns))
    if sys.stdout.isatty():
        return Console()
    return Console(width=PIPE_WIDTH)


__all__ = ["PIPE_WIDTH", "console"]
