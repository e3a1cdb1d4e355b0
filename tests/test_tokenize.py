"""Tokenizer: rejoining an unperturbed document gives back every character; words are exactly the
maximal runs of word characters; case patterns and lookup keys."""

from __future__ import annotations

import string
import unicodedata
from itertools import groupby

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dptext.transforms.tokenize import WORD, Tokens, apply_case, case_pattern, rejoin, split_tokens

_PIECES = st.sampled_from(
    [
        "the",
        "Cat",
        "NASA",
        "I",
        "don't",
        "don\u2019t",
        "self-driving",
        "x_y",
        "_",
        "__init__",
        "42",
        "\u0663\u00b2",
        "e\u0301te\u0301",
        "caf\u00e9",
        "\u0301",
        "\u0915\u094d\u0937\u0947",
        "\u0e20\u0e32\u0e29\u0e32\u0e44\u0e17\u0e22",
        "\u65e5\u672c\u8a9e",
        "\U00011013\U00011038",
        "\U0001e900\U0001e944",
        "\u01c5emal",
        " ",
        "  ",
        "\t",
        "\n",
        "\r\n",
        "\u00a0",
        "\u2009",
        "\u3000",
        "\u2028",
        "\x00",
        "\x1f",
        "\u200b",
        "\u200c",
        "\u200d",
        ",",
        ".",
        "!?",
        "'",
        "\u2019",
        "-",
        "\u2014",
        "#tag",
        "@user_1",
        "http://t.co/x?a=1&b_c=2",
        "<unk>",
        "\U0001f600",
        "\U0001f469\u200d\U0001f4bb",
        "\U0001f44d\U0001f3fd",
        "\u2764\ufe0f",
        "1\ufe0f\u20e3",
        "\U0001f1ef\U0001f1f5",
        "\u20e3",
        "\ufe0f",
        "\U000e0101",
    ]
)
_TEXTS = st.one_of(st.text(), st.lists(_PIECES, max_size=40).map("".join))


def _is_word_char(c: str) -> bool:
    """The definition, one character at a time: \\w without "_" (str.isalnum is what re's \\w uses
    besides "_"), or a combining mark (Mn, Mc) that is not a variation selector."""
    if c.isalnum():
        return True
    selector = "\ufe00" <= c <= "\ufe0f" or "\U000e0100" <= c <= "\U000e01ef"
    return unicodedata.category(c) in ("Mn", "Mc") and not selector


def _reference_split(text: str) -> Tokens:
    runs = ["".join(g) for _, g in groupby(text, key=_is_word_char)]
    if not runs or _is_word_char(runs[0][0]):
        runs.insert(0, "")
    if len(runs) % 2 == 0:
        runs.append("")
    return Tokens(runs[1::2], runs[0::2])


@settings(max_examples=300, deadline=None)
@given(_TEXTS)
def test_rejoin_gives_back_every_character(text):
    tokens = split_tokens(text)
    assert len(tokens.separators) == len(tokens.words) + 1
    assert rejoin(*tokens) == text
    assert all(WORD.fullmatch(w) for w in tokens.words)
    assert all(not WORD.search(sep) for sep in tokens.separators)
    assert split_tokens(rejoin(*tokens)) == tokens


@settings(max_examples=300, deadline=None)
@given(_TEXTS)
def test_words_are_the_maximal_runs_of_word_characters(text):
    # Also checks that the fast path (no "_", no plane-1 marks) and the full regex agree.
    assert split_tokens(text) == _reference_split(text)


@settings(max_examples=300, deadline=None)
@given(_TEXTS, st.data())
def test_cutting_where_no_word_continues_keeps_the_words(text, data):
    # transforms.beam.split_long_text cuts long documents where the characters on both sides are
    # not both word characters; the words of the pieces must then be the words of the whole.
    cut = data.draw(st.integers(0, len(text)))
    if 0 < cut < len(text) and WORD.match(text[cut - 1]) and WORD.match(text[cut]):
        return
    assert split_tokens(text[:cut]).words + split_tokens(text[cut:]).words == split_tokens(text).words


def test_examples():
    assert split_tokens("Don't stop-believing!") == (["Don", "t", "stop", "believing"], ["", "'", " ", "-", "!"])
    assert split_tokens("") == ([], [""])
    assert split_tokens("  leading and trailing  ").separators == ["  ", " ", " ", "  "]
    assert split_tokens("cars_\u00d1_.no").words == ["cars", "\u00d1", "no"]
    assert split_tokens("\u65e5\u672c\u8a9e text").words == ["\u65e5\u672c\u8a9e", "text"]
    # Combining marks stay inside their word: a decomposed accent, Devanagari and Thai vowel
    # signs, a Brahmi (plane 1) vowel sign.
    assert split_tokens("nai\u0308ve cafe\u0301").words == ["nai\u0308ve", "cafe\u0301"]
    assert split_tokens("na\u00efve caf\u00e9").words == ["na\u00efve", "caf\u00e9"]
    assert split_tokens("\u0928\u092e\u0938\u094d\u0924\u0947 \u0e20\u0e32\u0e29\u0e34").words == [
        "\u0928\u092e\u0938\u094d\u0924\u0947",
        "\u0e20\u0e32\u0e29\u0e34",
    ]
    assert split_tokens("\U00011013\U00011038 x").words == ["\U00011013\U00011038", "x"]
    # Emoji, their variation selectors, keycaps and joiners are separators.
    assert split_tokens("\u2764\ufe0f \U0001f469\u200d\U0001f4bb ok").words == ["ok"]
    assert split_tokens("1\ufe0f\u20e3") == (["1"], ["", "\ufe0f\u20e3"])
    assert split_tokens("a\tb\u00a0c\nd\x00e").separators == ["", "\t", "\u00a0", "\n", "\x00", ""]


def test_rejoin_lengths():
    assert rejoin([], ["!!"]) == "!!"
    with pytest.raises(ValueError, match="2 separators for 2 words"):
        rejoin(["a", "b"], ["", ""])


def test_case_patterns_and_restoring_them():
    cases = {
        "hello": "lower",
        "Hello": "title",
        "I": "title",
        "NASA": "upper",
        "iPhone": "other",
        "McDonald": "other",
        "42": "lower",
        "\u65e5\u672c": "lower",
        "\u00c9lan": "title",
        "\u00c9COLE": "upper",
        "E\u0301COLE": "upper",
        "3D": "upper",
        "A1": "title",
        "\u01c5emal": "title",
    }
    assert {w: case_pattern(w) for w in cases} == cases
    for word, pattern in cases.items():
        if pattern != "other":
            assert apply_case(word.lower(), pattern) == word
    assert apply_case("movie", "title") == "Movie" and apply_case("movie", "upper") == "MOVIE"
    assert apply_case("movie", "other") == "movie" and apply_case("movie", "lower") == "movie"
    assert apply_case("", "title") == ""


@settings(max_examples=300, deadline=None)
@given(st.text(string.ascii_letters, min_size=1))
def test_case_pattern_definitions_on_letters(word):
    first, rest = word[0], word[1:]
    expected = (
        "lower"
        if word.islower()
        else "title"
        if first.isupper() and not any(c.isupper() for c in rest)
        else "upper"
        if word.isupper() and len(word) >= 2
        else "other"
    )
    assert case_pattern(word) == expected
    if expected != "other":
        assert apply_case(word.lower(), expected) == word
