"""The one error a checkpoint that cannot be served raises."""
from __future__ import annotations


class CheckpointError(ValueError):
    """The checkpoint cannot be served; the message says what is wrong with it."""
