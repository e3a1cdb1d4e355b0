"""Split text into word tokens and the exact separators between them; rejoin; case patterns.

A word is a run of letters and digits (Unicode \\w without the underscore, plus combining marks).
Apostrophes, hyphens, underscores and punctuation are separators that pass through byte for byte:
the default GloVe vocabulary has no word containing them ("don't" is "don" ' "t" there).
"""
from __future__ import annotations

import re
from itertools import chain
from typing import NamedTuple

WORD = re.compile(r"(?:[^\W_]|[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f])+")
_SPLIT = re.compile(rf"({WORD.pattern})")


class Tokens(NamedTuple):
    words: list[str]
    separators: list[str]      # len(words) + 1: before the first word, between words, after the last


def split_tokens(text: str) -> Tokens:
    # re.split with one capturing group alternates separator, word, separator, ... separator.
    pieces = _SPLIT.split(text)
    return Tokens(pieces[1::2], pieces[0::2])


def rejoin(words: list[str], separators: list[str]) -> str:
    return "".join(chain.from_iterable(zip(separators, words))) + separators[-1]


def case_pattern(word: str) -> str:
    """lower, title ("Hello", "I"), upper ("NASA") or other ("iPhone")."""
    if word == word.lower():
        return "lower"
    rest = word[1:]
    if word[:1].isupper() and rest == rest.lower():
        return "title"
    # Not title, so an all-upper word here has at least two cased letters.
    return "upper" if word == word.upper() else "other"


def apply_case(word: str, pattern: str) -> str:
    """Put an input's case pattern on an output word (title and upper; others unchanged)."""
    if pattern == "title":
        return word[:1].upper() + word[1:]
    if pattern == "upper":
        return word.upper()
    return word

