"""Split text into word tokens and the exact separators between them; rejoin; case patterns.

A word is a maximal run of letters, digits (\\w without "_") and combining marks (Mn, Mc). Everything else,
' \u2019 - _ punctuation and emoji included, is a separator kept as is: the default vocabulary has no word with them.
Two adjacent word characters are thus always in one word; `transforms.beam.split_long_text` relies on that.
"""

from __future__ import annotations

import re
import unicodedata
from typing import NamedTuple


def _mark_ranges() -> list[tuple[str, str]]:
    """Runs of consecutive code points in categories Mn and Mc, variation selectors left out
    (they style emoji). Beyond plane 1 the only marks are plane 14's variation selectors, so
    this covers every mark of the Unicode database that \\w itself uses."""
    chars = "".join(map(chr, range(0x0300, 0x20000)))
    ranges: list[tuple[str, str]] = []
    for c, cat in zip(chars, map(unicodedata.category, chars)):
        if cat not in ("Mn", "Mc") or "\ufe00" <= c <= "\ufe0f":
            continue
        if ranges and ord(c) == ord(ranges[-1][1]) + 1:
            ranges[-1] = (ranges[-1][0], c)
        else:
            ranges.append((c, c))
    return ranges


def _class_body(ranges: list[tuple[str, str]]) -> str:
    return "".join(re.escape(a) if a == b else f"{re.escape(a)}-{re.escape(b)}" for a, b in ranges)


_MARKS = _mark_ranges()
_BMP = _class_body([r for r in _MARKS if r[0] <= "\uffff"])
_PLANE1 = _class_body([r for r in _MARKS if r[0] > "\uffff"])
_PLANE1_SPAN = _class_body([(min(r[0] for r in _MARKS if r[0] > "\uffff"), _MARKS[-1][1])])
# Runs of letters/digits, of BMP marks, of plane-1 marks. The classes are disjoint, so nothing
# backtracks. Plane-1 marks (historic and minority scripts) are tried only after a one-range
# check, since re compares a character with each of their ~100 ranges in turn.
WORD = re.compile(rf"(?:[^\W_]+|[{_BMP}]+|(?=[\U00010000-\U0001ffff])[{_PLANE1}]+)+")
_SPLIT = re.compile(rf"({WORD.pattern})")
# Twice as fast, one class (\w, which includes "_", and BMP marks): it splits as WORD does on any
# text without "_" and without characters in the span of the plane-1 marks (emoji lie above it).
_SPLIT_FAST = re.compile(rf"([\w{_BMP}]+)")
_NEEDS_SPLIT = re.compile(rf"[_{_PLANE1_SPAN}]")


class Tokens(NamedTuple):
    words: list[str]
    separators: list[str]  # len(words) + 1: before the first word, between words, after the last


def split_tokens(text: str) -> Tokens:
    # re.split with one capturing group alternates separator, word, separator, ... separator.
    pieces = (_SPLIT if _NEEDS_SPLIT.search(text) else _SPLIT_FAST).split(text)
    return Tokens(pieces[1::2], pieces[0::2])


def rejoin(words: list[str], separators: list[str]) -> str:
    """separators[0] + words[0] + separators[1] + ... + words[-1] + separators[-1]."""
    if len(separators) != len(words) + 1:
        raise ValueError(
            f"rejoin needs len(separators) == len(words) + 1; got {len(separators)} separators for {len(words)} words"
        )
    pieces = [""] * (2 * len(words) + 1)
    pieces[0::2] = separators
    pieces[1::2] = words
    return "".join(pieces)


def case_pattern(word: str) -> str:
    """One of lower (also "42"), title ("Hello", "I"), upper ("NASA", "3D"), other ("iPhone")."""
    if word == word.lower():
        return "lower"
    rest = word[1:]
    # istitle() on one character: an upper-case or title-case letter ("A", "ǅ").
    if word[:1].istitle() and rest == rest.lower():
        return "title"
    return "upper" if word == word.upper() else "other"


def apply_case(word: str, pattern: str) -> str:
    """Put an input's case pattern on an output word: title and upper; lower and other leave it."""
    if pattern == "title":
        return word[:1].title() + word[1:]
    if pattern == "upper":
        return word.upper()
    return word
