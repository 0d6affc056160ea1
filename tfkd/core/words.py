"""Counts in the words people read: '1 trial', '2 trials'."""

from __future__ import annotations


def counted(number: int, noun: str) -> str:
    """'1 trial', '0 trials', '3 trials' (a noun whose plural adds an s)."""
    return f"{number} {noun}{'s' * (number != 1)}"
