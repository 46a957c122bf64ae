"""Errors that the scripts report as one line (problem and fix), with no traceback and exit code 2."""
from __future__ import annotations

import os
import sys
from typing import Callable


class UserError(Exception):
    """A problem with the user's input or environment; the message names the problem and the fix."""


def one_line(e: Exception) -> str:
    """The message of ``e``; of a UserError re-raised from a DataLoader worker, its last line."""
    msg = str(e)
    if "Original Traceback" in msg:
        msg = msg.strip().splitlines()[-1].split("UserError: ", 1)[-1]
    return msg


def run_cli(main: Callable[[], object]) -> None:
    """Run ``main()``; print a UserError as ``error: ...`` on stderr and exit with status 2."""
    try:
        main()
    except UserError as e:
        msg = one_line(e)
        rank = os.environ.get("RANK", "0")  # under torchrun every process reports; name the others
        print(f"error: {msg}" if rank == "0" else f"error (rank {rank}): {msg}", file=sys.stderr)
        sys.exit(2)
