"""Tokenizer: rejoining an unperturbed document gives back every character; case patterns."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.tokenize import WORD, apply_case, case_pattern, rejoin, split_tokens

_PIECES = st.sampled_from(["the", "Cat", "NASA", "don't", "self-driving", "e\u0301te\u0301", "日本語", "x_y",
                           " ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u2009", ",", ".", "!?", "'", "\u2019",
                           "-", "😀", "👩\u200d💻", "\x00", "\u0301", "#tag", "@user", "http://t.co/x", "42"])


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(), st.lists(_PIECES, max_size=40).map("".join)))
def test_rejoin_gives_back_every_character(text):
    tokens = split_tokens(text)
    assert len(tokens.separators) == len(tokens.words) + 1
    assert rejoin(tokens.words, tokens.separators) == text
    assert all(WORD.fullmatch(w) for w in tokens.words)
    assert all(not WORD.search(sep) for sep in tokens.separators)
    assert split_tokens(rejoin(tokens.words, tokens.separators)) == tokens


def test_examples():
    assert split_tokens("Don't stop-believing!") == (["Don", "t", "stop", "believing"], ["", "'", " ", "-", "!"])
    assert split_tokens("") == ([], [""])
    assert split_tokens("  lead and trail  ").separators == ["  ", " ", " ", "  "]
    assert split_tokens("cars_\u00d1_.no").words == ["cars", "\u00d1", "no"]
    # A decomposed accent stays inside its word.
    assert split_tokens("cafe\u0301 ok").words == ["cafe\u0301", "ok"]
    assert split_tokens("日本語 text").words == ["日本語", "text"]


def test_case_patterns_and_restoring_them():
    cases = {"hello": "lower", "Hello": "title", "I": "title", "NASA": "upper", "iPhone": "other",
             "McDonald": "other", "42": "lower", "Élan": "title", "ÉCOLE": "upper"}
    assert {w: case_pattern(w) for w in cases} == cases
    for word, pattern in cases.items():
        if pattern in ("lower", "title", "upper"):
            assert apply_case(word.lower(), pattern) == word
    assert apply_case("movie", "title") == "Movie" and apply_case("movie", "upper") == "MOVIE"
    assert apply_case("movie", "other") == "movie"

