"""syntf: the WordNet reader, the synonym table stored with the index, the sampler against its exact
distribution at fixed seeds, broken variants that must fail, the exact worst log-ratio against the
guarantee it prints, and runs end to end through `dptext run`, dptext.Privatize, stats and calibrate.

Needs WordNet 3.0's files (Debian's wordnet-base; `make test` installs it)."""

from __future__ import annotations

import decimal
import json
import math

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

import dptext
from dptext.pipeline.cli import main
from dptext.transforms import mechanisms
from dptext.transforms.audit import audit_pairs, total_variation
from dptext.transforms.index import EmbeddingIndex, TableError
from dptext.transforms.mechanisms.syntf import (
    OFFSETS_TABLE,
    SynTF,
    per_token_epsilon,
    score_matrix,
    syntf_distribution,
)
from dptext.transforms.stats import calibrate, privacy_statistics
from dptext.transforms.wordnet import ENV, WordNet, WordNetError, synonym_table
from tests.conftest import build_words_index
from tests.test_santext import _tv_tolerance
from tests.test_truncated_gumbel import _chi_square_matches

DRAWS = 200_000
WORDS = "the car auto automobile machine Car cars dog cat ran run walk movie film love xyzzy".split()
CAR_SET = {"car", "auto", "automobile", "machine", "Car"}


@pytest.fixture(scope="module")
def words_index(tmp_path_factory):
    return build_words_index(tmp_path_factory.mktemp("syntf"), WORDS, d=3, neighbours=4, seed=3)


@pytest.fixture(scope="module")
def index(words_index):
    return EmbeddingIndex.load(words_index)


def _exact(index, epsilon):
    mech = mechanisms.create("syntf", index, epsilon)
    return mech, syntf_distribution(score_matrix(mech.offsets, mech.synonyms), epsilon)


# ---- WordNet --------------------------------------------------------------------------------------
def test_the_debian_wordnet_gives_synsets_and_base_forms():
    wn = WordNet()
    assert {"car", "auto", "automobile", "machine", "motorcar"} <= wn.synonyms("cars")  # morphy: cars -> car
    assert "run" in wn.synonyms("ran")  # verb.exc: ran -> run
    assert "good" in wn.synonyms("better")  # adj.exc: better -> good
    assert "belief" in wn.synonyms("believes")  # NLTK's noun rule "ves" -> "f"
    assert wn.synonyms("the") == set() and wn.synonyms("xyzzy") == set()
    assert "(a)" not in "".join(lemma for lemmas in wn.lemmas for lemma in lemmas)  # adjective markers dropped


def _tiny_wordnet(path, version="3.0"):
    path.mkdir()
    header = f"  1 WordNet {version} Copyright 2006 by Princeton University.  \n"
    data = {
        "noun": "00000001 05 n 02 Cat 0 true_cat 0 000 | a feline\n00000002 05 n 02 kitty 0 cat 1 000 | x\n",
        "verb": "00000001 29 v 02 go 0 move 0 000 | travel\n",
        "adj": "00000001 00 a 02 big(a) 0 large 0 000 | above average\n",
        "adv": "",
    }
    for stem, body in data.items():
        (path / f"data.{stem}").write_text(header + body, encoding="utf-8")
    (path / "verb.exc").write_text("went go\n", encoding="utf-8")
    return path


def test_the_reader_parses_the_database_format(tmp_path):
    wn = WordNet(_tiny_wordnet(tmp_path / "wn"))
    assert wn.synonyms("cats") == {"cat", "true_cat", "kitty"}  # two synsets, lowercased, suffix rule
    assert wn.synonyms("went") == {"go", "move"}  # exception list
    assert wn.synonyms("big") == {"big", "large"}  # "(a)" marker dropped
    offsets, ids = synonym_table(["cat", "Kitty", "went", "move", "large", "zzz"], wn)
    rows = [ids[offsets[i] : offsets[i + 1]].tolist() for i in range(6)]
    # "went" reaches "move" through its base form "go"; "move" does not reach the inflection "went";
    # "large" has no synonym in the vocabulary ("big" is not in it).
    assert rows == [[0, 1], [0, 1], [2, 3], [3], [4], [5]]
    assert offsets.dtype == np.int64 and ids.dtype == np.int32


def test_missing_or_other_wordnet_is_refused_with_how_to_install(tmp_path, monkeypatch):
    with pytest.raises(WordNetError, match=r"data\.noun: WordNet file not found; install WordNet 3\.0.*wordnet-base"):
        WordNet(tmp_path)
    with pytest.raises(WordNetError, match=r"not WordNet 3\.0"):
        WordNet(_tiny_wordnet(tmp_path / "wn2", version="2.1"))
    # A launcher without WordNet: the mechanism cannot build its table and says why (a ValueError,
    # so `dptext build-index` notes it and goes on).
    idx = EmbeddingIndex.build(["a", "b"], np.eye(2, dtype=np.float32), tmp_path / "i", neighbours=1, progress=False)
    monkeypatch.setenv(ENV, str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="wordnet-base"):
        mechanisms.create("syntf", idx, 1.0)


def test_build_index_without_wordnet_notes_syntf_and_builds_the_rest(tmp_path, monkeypatch, capsys):
    vectors = np.random.default_rng(2).normal(size=(len(WORDS), 4))
    embedding = tmp_path / "e.txt"
    embedding.write_text(
        f"{len(WORDS)} 4\n" + "".join(f"{w} " + " ".join(f"{x:.5f}" for x in v) + "\n" for w, v in zip(WORDS, vectors)),
        encoding="utf-8",
    )
    monkeypatch.setenv(ENV, str(tmp_path / "nowhere"))
    args = ["build-index", "--embedding", str(embedding), "--out", str(tmp_path / "idx"), "--neighbours", "4"]
    assert main(args) == 0
    assert "syntf cannot run on this index" in capsys.readouterr().err
    names = {e["name"] for e in json.loads((tmp_path / "idx" / "manifest.json").read_text())["tables"].values()}
    assert "diffractor_lists" in names and not any(name.startswith("syntf") for name in names)
    monkeypatch.delenv(ENV)  # with WordNet the launcher stores the table, and a worker reads it
    mechanisms.create("syntf", EmbeddingIndex.load(tmp_path / "idx"), 1.0)
    mechanisms.create("syntf", EmbeddingIndex.load(tmp_path / "idx", read_only=True), 1.0)


# ---- the table ------------------------------------------------------------------------------------
def test_the_table_holds_each_word_and_its_vocabulary_synonyms(index):
    mech = mechanisms.create("syntf", index, 1.0)
    sets = {w: {WORDS[j] for j in mech.synonyms[mech.offsets[i] : mech.offsets[i + 1]]} for i, w in enumerate(WORDS)}
    assert sets["car"] == sets["Car"] == sets["machine"] == CAR_SET
    assert sets["cars"] == CAR_SET | {"cars"} and sets["ran"] == {"ran", "run"} and sets["run"] == {"run"}
    assert sets["movie"] == sets["film"] == {"movie", "film"}
    assert all(sets[w] == {w} for w in ("the", "dog", "xyzzy"))


def test_the_table_is_stored_once_and_read_by_workers(tmp_path, monkeypatch):
    path = build_words_index(tmp_path / "i", WORDS, d=3, neighbours=4, seed=3)
    with pytest.raises(TableError, match="syntf_synonym"):
        mechanisms.create("syntf", EmbeddingIndex.load(path, read_only=True), 1.0)
    launcher = mechanisms.create("syntf", EmbeddingIndex.load(path), 1.0)
    monkeypatch.setenv(ENV, str(tmp_path / "nowhere"))  # a worker without WordNet reads the stored table
    worker = mechanisms.create("syntf", EmbeddingIndex.load(path, read_only=True), 1.0)
    assert np.array_equal(worker.offsets, launcher.offsets) and np.array_equal(worker.synonyms, launcher.synonyms)
    manifest = json.loads((path / "manifest.json").read_text())
    assert any(entry["name"] == OFFSETS_TABLE for entry in manifest["tables"].values())


# ---- the sampler against the exact distribution ----------------------------------------------------
@pytest.mark.parametrize("epsilon", [1.0, 6.0])
@pytest.mark.parametrize("word", ["the", "car", "cars", "ran"])
def test_sampler_matches_the_exponential_mechanism(index, epsilon, word):
    """P[M(w)=y] proportional to exp(eps u(w, y) / 2) over all 16 words: chi-square (false alarm 1e-6)
    and the total-variation distance within its sampling bound (test_santext._tv_tolerance: E[TV] <=
    sum_i sqrt(p_i (1 - p_i) / N) / 2 plus McDiarmid's sqrt(ln(1e6) / (2N)))."""
    mech, exact = _exact(index, epsilon)
    w = WORDS.index(word)
    stat, threshold = _chi_square_matches(mech, w, exact[w], seed=w)
    assert stat < threshold, (stat, threshold)
    out = mech.perturb(np.full(DRAWS, w, dtype=np.int32), np.random.default_rng(100 + w))
    tv = float(total_variation(np.bincount(out, minlength=len(WORDS)) / DRAWS, exact[w]))
    assert tv < _tv_tolerance(exact[w], DRAWS), tv


def test_a_mixed_batch_keeps_each_word_exact(index):
    mech, exact = _exact(index, 3.0)
    ids = np.tile(np.arange(len(WORDS), dtype=np.int32), 20_000)
    out = mech.perturb(ids, np.random.default_rng(5))
    for w in range(len(WORDS)):
        observed = np.bincount(out[ids == w], minlength=len(WORDS)) / 20_000
        assert total_variation(observed, exact[w]) < _tv_tolerance(exact[w], 20_000), WORDS[w]


class _DoubleEpsilon(SynTF):
    """Broken: weights exp(eps u) (the exponential mechanism's 1/2 dropped)."""

    def _perturb(self, ids, rng):
        self.epsilon *= 2
        try:
            return super()._perturb(ids, rng)
        finally:
            self.epsilon /= 2


class _OutsideIncludesSynonyms(SynTF):
    """Broken: the "other words" draw is uniform over the whole vocabulary, S(w) included."""

    def _outside(self, ids, s, rng):
        return rng.integers(0, self.index.n, len(ids)).astype(np.int32)


class _SynonymsOnly(SynTF):
    """Broken the way mldp-text's SynTF is: the output is always a synonym (never another word)."""

    def _perturb(self, ids, rng):
        s = self.sizes[ids]
        return self.synonyms[self.offsets[ids] + rng.integers(0, s)]


@pytest.mark.parametrize("broken", [_DoubleEpsilon, _OutsideIncludesSynonyms, _SynonymsOnly])
def test_broken_samplers_fail_the_oracle(index, broken):
    _, exact = _exact(index, 3.0)
    w = WORDS.index("car")
    stat, threshold = _chi_square_matches(broken(index, 3.0), w, exact[w], seed=1)
    assert stat > threshold, (broken.__name__, stat, threshold)


def test_extreme_epsilons_and_a_vocabulary_of_synonyms(index, tmp_path):
    rng = np.random.default_rng(2)
    huge = mechanisms.create("syntf", index, 1e300)  # e^(-eps/2) underflows: always a word of S(w)
    car = WORDS.index("car")
    out = huge.perturb(np.full(5000, car, dtype=np.int32), rng)
    assert {WORDS[i] for i in out} == CAR_SET
    assert (huge.perturb(np.full(100, 0, dtype=np.int32), rng) == 0).all()  # "the" has only itself
    assert math.isfinite(huge.guarantee().per_token_pure_epsilon)
    tiny = mechanisms.create("syntf", index, math.ulp(0.0))  # uniform over the vocabulary
    counts = np.bincount(tiny.perturb(np.full(DRAWS, car, dtype=np.int32), rng), minlength=len(WORDS))
    uniform = np.full(len(WORDS), 1 / len(WORDS))
    assert total_variation(counts / DRAWS, uniform) < _tv_tolerance(uniform, DRAWS)
    # Every word a synonym of every other (s = n): nothing outside S(w), the output uniform.
    path = build_words_index(tmp_path / "all", ["car", "auto", "automobile"], d=2, neighbours=2, seed=1)
    mech = mechanisms.create("syntf", EmbeddingIndex.load(path), 4.0)
    counts = np.bincount(mech.perturb(np.zeros(30_000, dtype=np.int32), rng), minlength=3) / 30_000
    assert total_variation(counts, np.full(3, 1 / 3)) < _tv_tolerance(np.full(3, 1 / 3), 30_000)


# ---- the guarantee against the exact worst log-ratio ------------------------------------------------
@pytest.mark.parametrize("epsilon", [0.5, 3.0, 40.0])
def test_the_exact_worst_log_ratio_is_the_stated_per_token_epsilon(index, epsilon):
    """Over every ordered pair of the 16 words and every output, the worst ln P[M(w)=y] / P[M(w')=y] of the
    closed form equals eps/2 + ln Z(s_max) - ln Z(s_min) (attained: "the" (s = 1) is not in S("cars")
    (s = 6)), which is at most eps."""
    mech, exact = _exact(index, epsilon)
    audited = audit_pairs(exact, np.ones((len(WORDS), len(WORDS))))
    g = mech.guarantee().as_dict()
    assert g["kind"] == "pure-DP" and g["basis"] == "proved" and g["rate"] is None
    assert audited["worst_log_ratio"] == pytest.approx(g["per_token_pure_epsilon"], rel=1e-9)
    assert g["per_token_pure_epsilon"] <= epsilon
    assert "for every pair of vocabulary words" in g["statement"] and "attained" in g["statement"]
    # A claim of eps/4 is contradicted by the same computation (it can fail).
    assert audited["worst_log_ratio"] > epsilon / 4


def test_the_bound_holds_for_any_zero_one_score():
    """The proof uses nothing but u in {0, 1} with u(w, w) = 1: random relations, exact distributions."""
    rng = np.random.default_rng(9)
    for trial in range(200):
        n = int(rng.integers(2, 12))
        u = (rng.random((n, n)) < rng.random()).astype(float)
        np.fill_diagonal(u, 1.0)
        eps = float(np.exp(rng.uniform(-3, 4)))
        worst = audit_pairs(syntf_distribution(u, eps), np.ones((n, n)))["worst_log_ratio"]
        s = u.sum(axis=1)
        assert worst <= per_token_epsilon(eps, n, int(s.min()), int(s.max())) + 1e-9 <= eps + 1e-9, (trial, n)


@pytest.mark.parametrize("epsilon", [math.ulp(0.0), 1e-300, 1e-8, 1.0, 20.3, 1e3, 1e308])
def test_the_printed_bound_is_never_below_the_true_one(epsilon):
    """Rounded up and capped at epsilon: positive for any epsilon > 0, at most epsilon, and at least
    eps/2 + ln Z(58) - ln Z(1) computed with 60 significant digits (decimal) where those suffice: the
    difference of the two logarithms (about 10) is about 57 eps / 2n, so eps >= 1e-8 keeps 45 digits."""
    bound = per_token_epsilon(epsilon, 33860, 1, 58)
    assert 0 < bound <= epsilon and bound >= epsilon / 2
    if 1e-8 <= epsilon <= 1e3:
        with decimal.localcontext() as ctx:
            ctx.prec = 60
            a = decimal.Decimal(epsilon) / 2
            z = [s * a.exp() + 33860 - s for s in (decimal.Decimal(58), decimal.Decimal(1))]
            exact = a + z[0].ln() - z[1].ln()
        assert decimal.Decimal(bound) >= exact and bound <= float(exact) * (1 + 1e-11)


# ---- end to end --------------------------------------------------------------------------------------
def test_dptext_run_end_to_end(words_index, tmp_path):
    (tmp_path / "c.txt").write_text("the car ran\nI love this film zebracorn\n", encoding="utf-8")
    args = ["run", "--input", str(tmp_path / "c.txt"), "--output", str(tmp_path / "o" / "x")]
    args += ["--index", str(words_index), "--runner", "DirectRunner", "--mechanism", "syntf", "--epsilon", "4"]
    assert main(args) == 0
    report = json.loads((tmp_path / "o" / "x.privacy_report.json").read_text())
    assert report["mechanism"] == "syntf" and report["guarantee"]["kind"] == "pure-DP"
    expected = per_token_epsilon(4.0, len(WORDS), 1, 6)
    assert report["per_document_bound"]["per_token_pure_epsilon"] == pytest.approx(expected)
    assert report["counts"]["tokens"] == 8
    out = [line for p in sorted((tmp_path / "o").glob("x-*")) for line in p.read_text().splitlines()]
    assert sorted(len(line.split()) for line in out) == [3, 5]


def test_privatize_end_to_end(words_index):
    texts = ["the car ran", "a dog love film"]
    with test_pipeline.TestPipeline() as p:
        private = p | beam.Create(texts) | dptext.Privatize(str(words_index), mechanism="syntf", epsilon=2.0)
        lengths = private.documents | beam.Map(lambda t: len(t.split()))
        reports = private.report | beam.Map(lambda r: (r["mechanism"], r["guarantee"]["kind"]))
        assert_that(lengths, equal_to([3, 4]), label="lengths")
        assert_that(reports, equal_to([("syntf", "pure-DP")]), label="report")


def test_stats_and_calibrate_agree_with_the_exact_unchanged_probability(index, words_index, tmp_path, capsys):
    """`dptext stats`' N_w against the exact P[M(w) = w] = e^(eps/2) / Z(s_w) for every word (6 binomial
    standard errors each: a false alarm below 16 x 2e-9), and calibrate's epsilon against the exact median
    N_w (bisection to 1% in epsilon plus the median's Monte Carlo error, inside 0.05)."""
    draws = 4000
    (stats,) = privacy_statistics(index, "syntf", [2.0], {}, sample=None, draws=draws, seed=0)
    p = np.diag(_exact(index, 2.0)[1])[stats.words]
    assert (np.abs(stats.unchanged - p) <= 6 * np.sqrt(p * (1 - p) / draws) + 1e-12).all()
    result = calibrate(index, "syntf", 0.5, {}, sample=16, draws=2000, high=200.0)
    assert abs(np.median(np.diag(_exact(index, result["epsilon"])[1])) - 0.5) < 0.05, result["epsilon"]
    out = tmp_path / "stats"
    args = ["stats", "--index", str(words_index), "--mechanism", "syntf", "--epsilon", "1", "8"]
    assert main(args + ["--out", str(out), "--sample", "0", "--draws", "200"]) == 0
    rows = json.loads((out / "stats.json").read_text())["rows"]
    assert rows[0]["unchanged"]["p50"] < rows[1]["unchanged"]["p50"]
    capsys.readouterr()
    assert main(["calibrate", "--index", str(words_index), "--mechanism", "syntf", "--target-unchanged", "0.3"]) == 0
    assert "syntf: epsilon" in capsys.readouterr().out


def test_registered_and_public():
    assert "syntf" in dptext.mechanisms.NAMES and "syntf" in mechanisms.NAMES
