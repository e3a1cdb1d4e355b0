"""The one base of every error a user can fix. `dptext` prints these as one line (exit 2);
anything else is a bug and keeps its traceback. No Beam import: the CLI's supervisor uses them."""

from __future__ import annotations


class DptextError(Exception):
    """A mistake in what the user gave dptext (an option, a parameter, a file); the message says
    what was wrong, where, and what would be valid."""


class ParameterError(DptextError, ValueError):
    """A mechanism or job parameter outside its valid range."""


class MissingFile(DptextError, FileNotFoundError):
    """A file or directory the user named does not exist."""
