"""WordNet 3.0's synonym relation, read from its database files (data.noun, data.verb, data.adj,
data.adv and the *.exc exception lists), as Debian's `wordnet-base` installs them under
/usr/share/wordnet (NLTK's `corpora/wordnet` directory holds the same files).

Two words are synonyms when they are lemmas of one synset. An inflected word is first reduced to its
base forms as WordNet's morphy does (the exception lists, then the suffix rules, keeping only forms
that are lemmas of that part of speech), as NLTK's `wordnet.synsets(word)` does. No download, no
NLTK: the files are parsed directly.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from dptext.transforms.errors import DptextError

DEFAULT_DIR = "/usr/share/wordnet"
ENV = "DPTEXT_WORDNET"  # another directory holding the same files (e.g. NLTK's corpora/wordnet)
VERSION = "3.0"
POS_FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
INSTALL = (
    "install WordNet 3.0 (Debian/Ubuntu: `apt-get install wordnet-base`, or `make wordnet`), or set "
    f"{ENV} to a directory holding its data.noun, data.verb, data.adj, data.adv and *.exc files"
)
# morphy's suffix rules as NLTK 3.10 has them (WordNet's morph.c and NLTK's "ves" -> "f").
SUFFIXES = {
    "n": (
        ("s", ""),
        ("ses", "s"),
        ("ves", "f"),
        ("xes", "x"),
        ("zes", "z"),
        ("ches", "ch"),
        ("shes", "sh"),
        ("men", "man"),
        ("ies", "y"),
    ),
    "v": (("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", "")),
    "a": (("er", ""), ("est", ""), ("er", "e"), ("est", "e")),
    "r": (),
}
_ADJ_MARKER = re.compile(r"\((a|p|ip)\)$")


class WordNetError(DptextError, ValueError):
    """WordNet's files are missing or not WordNet 3.0."""


def wordnet_dir() -> Path:
    return Path(os.environ.get(ENV) or DEFAULT_DIR)


class WordNet:
    """The synsets of every lemma, per part of speech, and morphy's exception lists."""

    def __init__(self, directory: Path | str | None = None):
        self.directory = Path(directory) if directory is not None else wordnet_dir()
        self.synsets: dict[tuple[str, str], list[int]] = defaultdict(list)  # (lemma, pos) -> synset numbers
        self.lemmas: list[tuple[str, ...]] = []  # synset number -> its lemmas (lowercase)
        self.exceptions: dict[str, dict[str, tuple[str, ...]]] = {}
        for pos, stem in POS_FILES.items():
            self._read_data(pos, self._path(f"data.{stem}"))
            self.exceptions[pos] = self._read_exceptions(self.directory / f"{stem}.exc")

    def _path(self, name: str) -> Path:
        path = self.directory / name
        if not path.is_file():
            raise WordNetError(f"{path}: WordNet file not found; {INSTALL}")
        return path

    def _read_data(self, pos: str, path: Path) -> None:
        version_seen = False
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("  "):  # the licence header
                    version_seen = version_seen or f"WordNet {VERSION} " in line
                    continue
                fields = line.split(" ", 4 + 2 * 256)
                try:
                    count = int(fields[3], 16)
                    words = fields[4 : 4 + 2 * count : 2]
                except (IndexError, ValueError):
                    raise WordNetError(f"{path}: not a WordNet data file (line {line[:20]!r}...); {INSTALL}") from None
                number = len(self.lemmas)
                lemmas = tuple(dict.fromkeys(_ADJ_MARKER.sub("", w).lower() for w in words))
                self.lemmas.append(lemmas)
                for lemma in lemmas:
                    self.synsets[(lemma, pos)].append(number)
        if not version_seen:
            raise WordNetError(f"{path}: not WordNet {VERSION} (its header names no 'WordNet {VERSION}'); {INSTALL}")

    @staticmethod
    def _read_exceptions(path: Path) -> dict[str, tuple[str, ...]]:
        out: dict[str, tuple[str, ...]] = {}
        if path.is_file():
            with open(path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    parts = line.split()
                    if len(parts) >= 2:
                        out[parts[0]] = tuple(parts[1:])
        return out

    def base_forms(self, word: str, pos: str) -> list[str]:
        """morphy: the word itself and its base forms that are lemmas of pos (exceptions first)."""
        if word in self.exceptions[pos]:
            forms = [word, *self.exceptions[pos][word]]
        else:
            forms = [word] + [word[: -len(old)] + new for old, new in SUFFIXES[pos] if word.endswith(old)]
        return [f for f in dict.fromkeys(forms) if (f, pos) in self.synsets]

    def synonyms(self, word: str) -> set[str]:
        """Every lemma sharing a synset with a base form of word (lowercase; the word's own lemmas included)."""
        word = word.lower()
        out: set[str] = set()
        for pos in POS_FILES:
            for form in self.base_forms(word, pos):
                for number in self.synsets[(form, pos)]:
                    out.update(self.lemmas[number])
        return out


def synonym_table(words: list[str], wordnet: WordNet) -> tuple[np.ndarray, np.ndarray]:
    """For each vocabulary word w, the sorted ids of S(w): w itself and every vocabulary word whose
    lowercase form is a WordNet synonym of w. Returned as (offsets, ids): S(word i) is
    ids[offsets[i]:offsets[i + 1]] (offsets int64 of length n + 1, ids int32)."""
    by_lower: dict[str, list[int]] = defaultdict(list)
    for i, w in enumerate(words):
        by_lower[w.lower()].append(i)
    counts = np.empty(len(words), dtype=np.int64)
    rows = []
    for i, w in enumerate(words):
        row = {i}
        for lemma in wordnet.synonyms(w):
            row.update(by_lower.get(lemma, ()))
        rows.append(sorted(row))
        counts[i] = len(row)
    offsets = np.zeros(len(words) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    ids = np.fromiter((j for row in rows for j in row), dtype=np.int32, count=int(offsets[-1]))
    return offsets, ids
