"""Checks that a `pagebatch ...` command line written in a config file or a doc is one the CLI accepts."""
from __future__ import annotations

import contextlib
import io

from pagebatch.jobs.commands.cli import build_parser


def parse_error(argv: list[str]) -> str | None:
    """argparse's complaint about ``argv`` (without the program name), or None when it parses."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(argv)
    except SystemExit as e:
        return None if e.code == 0 else stderr.getvalue().strip() or f"exit {e.code}"
    return None
