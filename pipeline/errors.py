"""Errors a user can fix, which `dptext` reports as one line (no Beam import: the CLI's supervisor uses them)."""

from __future__ import annotations

from dptext.transforms.errors import DptextError


class OptionsError(DptextError, ValueError):
    """A dptext option is missing or invalid."""
