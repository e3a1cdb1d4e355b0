"""Errors a user can fix, which `dptext` reports as one line (no Beam import: the CLI's supervisor uses them)."""
from __future__ import annotations


class OptionsError(ValueError):
    """A dptext option is missing or invalid."""
