"""Privacy units and the per-unit cap: the admission rule (exact, any merge order, uniform), and
whole runs on a skewed corpus at several caps (no unit past the cap, counts add up, the withheld
file holds no text and no unit id, the report's bound is the cap's)."""

from __future__ import annotations

import glob
import itertools
import json
import math
import random
import re
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dptext.pipeline.errors import OptionsError
from dptext.pipeline.io import JsonLine
from dptext.pipeline.outputs import existing_outputs
from dptext.pipeline.run import run
from dptext.pipeline.units import AdmitCombineFn, UnitPolicy, _prefix, unit_of
from dptext.transforms.accounting import composed_bound
from dptext.transforms.beam import Document
from dptext.transforms.config import InvalidParameter, JobConfig
from dptext.transforms.tokenize import split_tokens
from tests.conftest import build_words_index, dptext_counters, shard_lines

WORDS = "the cat sat on a mat dog ran to park hello world good bad day night".split()
MECHANISM = ["--mechanism", "multivariate_laplace", "--epsilon", "5"]
WITHHELD_REASONS = re.compile(
    r"document has \d+ word tokens, more than the \d+ a unit may release in this run"
    r"|its unit reached (--max-tokens-per-unit \d+|its allowance: .*) \(documents admitted in a uniformly random "
    r"order until the next one would pass it\)"
)


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    return build_words_index(tmp_path_factory.mktemp("units_index"), WORDS, d=5, neighbours=6, seed=3)


def skewed_corpus(path: Path, seed: int = 1, heavy_share: float = 0.7, documents: int = 300) -> list[dict]:
    """JSONL where one unit writes most documents; every word is in the vocabulary. Unit ids are
    long random-looking strings, so a leak of one into another file is unmistakable."""
    rng = random.Random(seed)
    records = []
    for i in range(documents):
        unit = "unit-HEAVY-q8z3" if rng.random() < heavy_share else f"unit-{rng.randrange(40):02d}-k4v9"
        words = [rng.choice(WORDS) for _ in range(rng.choice([0, 1, 2, 3, 5, 8, 13, 40]))]
        records.append({"user": unit, "n": i, "text": " ".join(words)})
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def _run(index_dir, tmp_path, inputs, *extra, name="out"):
    output = str(tmp_path / name / "corpus")
    result = run(["--input", str(inputs), "--output", output, "--index", str(index_dir), *MECHANISM, *extra])
    return output, result


def _report(output) -> dict:
    return json.loads(Path(output + ".privacy_report.json").read_text("utf-8"))


def _tokens(text: str) -> int:
    return len(split_tokens(text).words)


def nearest_rank(values: list[int], q: int) -> int:
    ordered = sorted(values)
    return ordered[math.ceil(q * len(ordered) / 100) - 1]


# ---------------------------------------------------------------------------------------------
# The admission rule, without Beam.


def rule(items: list[tuple], allowance: int) -> set:
    """The rule as the README states it (an independent oracle): in priority order, admit while the
    running total stays within the allowance; the first that would pass it stops the unit."""
    admitted, total = set(), 0
    for _, tokens, doc_id in sorted(items):
        if total + tokens > allowance:
            break
        admitted.add(doc_id)
        total += tokens
    return admitted


def _policy(cap: int) -> UnitPolicy:
    return UnitPolicy(field="user", hash_key=b"k" * 32, max_tokens=cap, per_token_epsilon=1.0)


def _combine(fn, items, rng, parts: int):
    """items fed to `parts` accumulators in random order, merged in a random tree."""
    accumulators = [fn.create_accumulator() for _ in range(parts)]
    for item in items:
        fn.add_input(accumulators[rng.randrange(parts)], (0, *item))
    while len(accumulators) > 1:
        rng.shuffle(accumulators)
        k = rng.randint(2, len(accumulators))
        accumulators = [fn.merge_accumulators(accumulators[:k]), *accumulators[k:]]
    return fn.extract_output(accumulators[0])


class _TruncatingCombineFn(AdmitCombineFn):
    """Broken on purpose: keeps the first records to arrive (as many as the cap), not the first by priority."""

    def add_input(self, acc, element):
        if element[0] == 0 and len(acc[4]) >= self.policy.cap:
            acc[3] += 1
            return acc
        return super().add_input(acc, element)


def test_the_per_unit_combine_is_exact_under_any_split_and_merge_order():
    rng = random.Random(5)
    for trial in range(300):
        cap = rng.choice([1, 2, 5, 17, 60])
        n = rng.randint(0, 400)
        items = [(rng.getrandbits(63), rng.randint(1, cap), i) for i in range(n)]
        outcome = _combine(AdmitCombineFn(_policy(cap)), items, rng, parts=rng.randint(1, 9))
        assert set(outcome.admitted) == rule(items, cap), trial
        assert outcome.released == sum(t for _, t, i in items if i in set(outcome.admitted)) <= cap
        assert outcome.documents == n and outcome.withheld == n - len(outcome.admitted)
    # The accumulator stays bounded: at most 2 (cap + 1) + 64 records whatever the unit's size.
    fn, acc = AdmitCombineFn(_policy(10)), None
    acc = fn.create_accumulator()
    for i in range(100_000):
        fn.add_input(acc, (0, rng.getrandbits(63), 1, i))
        assert len(acc[4]) <= 2 * 11 + 64 + 1


def test_a_combine_that_trims_by_arrival_is_caught():
    rng = random.Random(5)
    caught = 0
    for _ in range(50):
        items = [(rng.getrandbits(63), rng.randint(1, 5), i) for i in range(200)]
        outcome = _combine(_TruncatingCombineFn(_policy(20)), items, rng, parts=6)
        caught += set(outcome.admitted) != rule(items, 20)
    assert caught > 0


def test_prefix_keeps_exactly_what_the_rule_needs():
    items = [(3, 4, "c"), (1, 4, "a"), (2, 4, "b"), (4, 1, "d")]
    assert _prefix(items, 8) == [(1, 4, "a"), (2, 4, "b"), (3, 4, "c")]  # the third passes 8: it stops
    assert _prefix(items, 100) == sorted(items)


def _admitted_distribution(tokens: list[int], cap: int, draws: int, priority) -> Counter:
    fn = AdmitCombineFn(_policy(cap))
    seen = Counter()
    for draw in range(draws):
        acc = fn.create_accumulator()
        for i, t in enumerate(tokens):
            fn.add_input(acc, (0, priority(draw, i), t, i))
        seen[frozenset(fn.extract_output(acc).admitted)] += 1
    return seen


def _exact_distribution(tokens: list[int], cap: int) -> dict:
    """Over the n! equally likely orders, the probability of each admitted set."""
    orders = list(itertools.permutations(range(len(tokens))))
    exact = Counter(frozenset(rule([(rank, tokens[i], i) for rank, i in enumerate(o)], cap)) for o in orders)
    return {s: c / len(orders) for s, c in exact.items()}


@pytest.mark.parametrize("tokens,cap", [([1, 1, 1], 1), ([5, 1, 1, 3], 5), ([2, 2, 1, 4], 4)])
def test_the_admitted_set_follows_a_uniformly_random_order(tokens, cap):
    """Uniform 63-bit priorities (as KeyByUnitFn draws them) against the exact distribution over all
    orders. Tolerance per set: 5 standard deviations of a binomial frequency, 5 sqrt(p (1 - p) / n)
    with n = 4000 draws (at most 0.04); a fixed order (the broken variant) must fail it."""
    draws = 4000
    exact = _exact_distribution(tokens, cap)

    def check(seen):
        for subset in set(exact) | set(seen):
            p = exact.get(subset, 0.0)
            if abs(seen[subset] / draws - p) > 5 * math.sqrt(max(p * (1 - p), 1e-12) / draws):
                return False
        return True

    seeded = random.Random(11)  # 63-bit priorities as KeyByUnitFn draws them (there from os.urandom)
    assert check(_admitted_distribution(tokens, cap, draws, lambda d, i: seeded.getrandbits(63)))
    assert not check(_admitted_distribution(tokens, cap, draws, lambda d, i: i))  # arrival order


def test_unit_ids_from_jsonl_parquet_rows_and_dicts():
    def jsonl(line: str) -> Document:
        start = line.index('"text": ') + len('"text": ')
        end = line.index('"', start + 1) + 1
        return Document("f", 0, "x", JsonLine(line[:start], line[end:]))

    assert unit_of(jsonl('{"user": "ann", "text": "hi"}'), "user") == ("ann", None)
    assert unit_of(jsonl('{"user": 12345678901234567890123, "text": "hi"}'), "user") == (
        "12345678901234567890123",
        None,
    )
    assert unit_of(Document("f", 0, "x", {"user": 42}), "user") == ("42", None)  # 42 and "42": one unit
    for line, kind in [
        ('{"text": "hi"}', "missing privacy unit field 'user'"),
        ('{"user": null, "text": "hi"}', "is null"),
        ('{"user": 1.5, "text": "hi"}', "is a float"),
        ('{"user": true, "text": "hi"}', "is a bool"),
        ('{"user": "", "text": "hi"}', "is an empty string"),
        ('{"user": ["a"], "text": "hi"}', "is a list"),
        ('{"user": "ann", "user": "bob", "text": "hi"}', "appears more than once"),
    ]:
        unit, reason = unit_of(jsonl(line), "user")
        assert unit is None and kind in reason
    assert unit_of(Document("f", 0, "x"), "user")[1] == "a plain text record has no privacy unit field 'user'"


def test_unit_options_are_checked_at_the_door():
    base = dict(index_path="i", mechanism="tem", epsilon=1.0, text_field="text")
    with pytest.raises(InvalidParameter, match="max_tokens_per_unit needs"):
        JobConfig(**base, max_tokens_per_unit=5)
    with pytest.raises(InvalidParameter, match="max_tokens_per_unit must be an integer >= 1"):
        JobConfig(**base, privacy_unit="user", max_tokens_per_unit=0)
    with pytest.raises(InvalidParameter, match="privacy_unit 'user' needs records with fields"):
        JobConfig(**{**base, "text_field": None}, privacy_unit="user")
    with pytest.raises(InvalidParameter, match="is the text field itself"):
        JobConfig(**base, privacy_unit="text")


# ---------------------------------------------------------------------------------------------
# Whole runs.


@pytest.mark.parametrize("cap", [1, 7, 30, 10_000])
def test_no_unit_passes_the_cap_and_every_record_is_accounted_for(index_dir, tmp_path, cap):
    records = skewed_corpus(tmp_path / "in.jsonl")
    with open(tmp_path / "in.jsonl", "a") as f:  # records without a usable unit: dead letter
        f.write('{"text": "the cat"}\n{"user": null, "text": "a dog"}\n')
    output, result = _run(
        index_dir, tmp_path, tmp_path / "in.jsonl", "--privacy-unit", "user", "--max-tokens-per-unit", str(cap)
    )
    docs = [json.loads(line) for line in shard_lines(output + "-*.jsonl")]
    withheld = [json.loads(line) for line in shard_lines(output + ".withheld-*.jsonl")]
    dead = [json.loads(line) for line in shard_lines(output + ".dead_letter-*.jsonl")]

    # Counts add up: every record is exactly one of document, withheld, dead letter.
    assert len(docs) + len(withheld) + len(dead) == len(records) + 2
    assert sorted(d["n"] for d in docs) == sorted(set(d["n"] for d in docs))
    assert {r["reason"] for r in dead} == {
        "missing privacy unit field 'user'",
        "privacy unit field 'user' is null; it must be a non-empty string or an integer",
    }
    # No unit passes the cap in the output.
    released = Counter()
    for d in docs:
        released[d["user"]] += _tokens(d["text"])
    assert max(released.values()) <= cap
    # The withheld file: exactly source, offset, reason; no text; no unit id.
    offsets = {}
    position = 0
    for r in records:
        offsets[position] = r
        position += len(json.dumps(r)) + 1
    raw = "".join(Path(p).read_text("utf-8") for p in glob.glob(output + ".withheld-*.jsonl"))
    assert "unit-" not in raw and "HEAVY" not in raw
    for w in withheld:
        assert set(w) == {"source", "offset", "reason"} and WITHHELD_REASONS.fullmatch(w["reason"])
        record = offsets[w["offset"]]
        if "more than" in w["reason"]:
            assert _tokens(record["text"]) > cap
    # The rule: a unit with withheld documents that fit the cap was stopped by one that would pass it.
    by_unit = {}
    for w in withheld:
        record = offsets[w["offset"]]
        if _tokens(record["text"]) <= cap:
            by_unit.setdefault(record["user"], []).append(_tokens(record["text"]))
    for unit, sizes in by_unit.items():
        assert released[unit] + max(sizes) > cap
    # Every document longer than the cap is withheld; a document of no word token is always released.
    released_n = {d["n"] for d in docs}
    for r in records:
        if _tokens(r["text"]) > cap:
            assert r["n"] not in released_n
        if _tokens(r["text"]) == 0:
            assert r["n"] in released_n

    report = _report(output)
    section = report["per_unit"]
    per_token = report["per_document_bound"]["per_token_pure_epsilon"]
    units = Counter(r["user"] for r in records)
    assert section["units"] == len(units) and section["documents"] == len(records)
    assert section["withheld"] == len(withheld) == report["counts"]["withheld"]
    assert report["counts"]["documents"] == len(docs)
    per_unit = [released.get(u, 0) for u in units]
    assert section["released_tokens_per_unit"] == {
        "p50": nearest_rank(per_unit, 50),
        "p90": nearest_rank(per_unit, 90),
        "p99": nearest_rank(per_unit, 99),
        "max": max(per_unit),
    }
    bound = composed_bound(cap, per_token, 1e-6)
    assert section["cap"]["tokens"] == cap and section["cap"]["basic"] == pytest.approx(cap * per_token)
    assert section["cap"]["composed_at_delta"] == pytest.approx(bound)
    sentence = f"Every unit's released tokens are protected by a composed epsilon of at most {bound:.6g} at delta 1e-06"
    assert any(line.startswith(sentence) for line in report["statement"])
    assert sentence in Path(output + ".privacy_report.md").read_text("utf-8")
    assert "unit-" not in Path(output + ".privacy_report.json").read_text("utf-8")
    counters = dptext_counters(result)
    assert counters.get("withheld", 0) == len(withheld) and counters["dead_lettered"] == len(dead)
    # The withheld file is one of the run's outputs: a second run is refused naming them, --overwrite replaces them.
    assert any(".withheld-" in path for path in existing_outputs(output))
    with pytest.raises(OptionsError, match="already exist; pass --overwrite"):
        _run(index_dir, tmp_path, tmp_path / "in.jsonl", "--privacy-unit", "user", "--max-tokens-per-unit", str(cap))


def glob_one(pattern: str) -> str:
    found = glob.glob(pattern)
    assert len(found) == 1, found
    return found[0]


def test_without_a_cap_the_report_gives_the_data_dependent_figures(index_dir, tmp_path):
    records = skewed_corpus(tmp_path / "in.jsonl", documents=120)
    output, _ = _run(index_dir, tmp_path, tmp_path / "in.jsonl", "--privacy-unit", "user")
    report = _report(output)
    section = report["per_unit"]
    per_unit = Counter()
    for r in records:
        per_unit[r["user"]] += _tokens(r["text"])
    assert section["withheld"] == 0 and "cap" not in section
    assert section["released_tokens_per_unit"]["max"] == max(per_unit.values())
    per_token = section["bound"]["per_token_pure_epsilon"]
    assert section["bound"]["composed_at_delta"]["max"] == pytest.approx(
        composed_bound(max(per_unit.values()), per_token, 1e-6)
    )
    assert any(line.startswith("No cap was set") for line in report["statement"])
    assert not any(line.startswith("Every unit's") for line in report["statement"])
    assert len(shard_lines(output + "-*.jsonl")) == len(records)


def test_a_mechanism_without_a_per_token_bound_composes_none_per_unit(index_dir, tmp_path):
    skewed_corpus(tmp_path / "in.jsonl", documents=40)
    output = str(tmp_path / "out" / "corpus")
    run(
        [
            "--input",
            str(tmp_path / "in.jsonl"),
            "--output",
            output,
            "--index",
            str(index_dir),
            "--epsilon",
            "1000",
            "--privacy-unit",
            "user",
            "--max-tokens-per-unit",
            "5",
        ]
    )
    report = _report(output)
    assert report["per_unit"]["bound"] is None and "no bound composes" in report["per_unit"]["bound_note"]
    assert any("no bound composes for a unit" in line for line in report["statement"])
    assert not any(line.startswith("Every unit's") for line in report["statement"])


def test_text_input_and_a_missing_parquet_column_are_refused(index_dir, tmp_path):
    (tmp_path / "in.txt").write_text("the cat\n")
    with pytest.raises(OptionsError, match="--privacy-unit user: the input is text"):
        _run(index_dir, tmp_path, tmp_path / "in.txt", "--privacy-unit", "user")
    pq.write_table(pa.table({"text": ["the cat"], "who": ["a"]}), tmp_path / "in.parquet")
    with pytest.raises(
        OptionsError, match="--privacy-unit user: the Parquet input has no such column; columns: text, who"
    ):
        _run(index_dir, tmp_path, tmp_path / "in.parquet", "--privacy-unit", "user")
    with pytest.raises(OptionsError, match="--max-tokens-per-unit needs"):
        _run(index_dir, tmp_path, tmp_path / "in.parquet", "--max-tokens-per-unit", "3")


def test_parquet_units_with_integer_ids(index_dir, tmp_path):
    rng = random.Random(3)
    users = [rng.choice([7, 7, 7, 8, 9, None]) for _ in range(60)]
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4))) for _ in users]
    pq.write_table(pa.table({"text": texts, "user": pa.array(users, pa.int64())}), tmp_path / "in.parquet")
    output, _ = _run(
        index_dir, tmp_path, tmp_path / "in.parquet", "--privacy-unit", "user", "--max-tokens-per-unit", "6"
    )
    docs = pq.read_table(glob_one(output + "-*.parquet")).to_pylist()
    withheld = shard_lines(output + ".withheld-*.jsonl")
    dead = shard_lines(output + ".dead_letter-*.jsonl")
    assert len(docs) + len(withheld) + len(dead) == len(users)
    assert len(dead) == users.count(None)
    released = Counter()
    for d in docs:
        released[d["user"]] += _tokens(d["text"])
    assert max(released.values()) <= 6 and set(released) <= {7, 8, 9}
    assert _report(output)["per_unit"]["units"] == len({u for u in users if u is not None})


_COLLECTED: dict = {}


def _keep(elements, name):
    _COLLECTED[name] = elements


def test_privatize_in_a_users_pipeline_caps_dict_elements(index_dir):
    import apache_beam as beam

    import dptext

    rng = random.Random(9)
    elements = [{"who": rng.choice(["ann", "bob", "bob", "bob"]), "text": "the cat sat"} for _ in range(40)]
    _COLLECTED.clear()
    with beam.Pipeline("DirectRunner") as p:
        private = (
            p
            | beam.Create(elements)
            | dptext.Privatize(
                index_dir, mechanism="tem", epsilon=2.0, text_field="text", privacy_unit="who", max_tokens_per_unit=7
            )
        )
        for name in ("documents", "withheld", "report"):
            getattr(private, name) | f"List{name}" >> beam.combiners.ToList() | f"Keep{name}" >> beam.Map(_keep, name)
    released = Counter()
    for d in _COLLECTED["documents"]:
        released[d["who"]] += _tokens(d["text"])
    assert released == {"ann": 6, "bob": 6}  # 3-token documents: two fit in 7
    assert len(_COLLECTED["withheld"]) == 40 - 4
    assert all(w["source"] is None and WITHHELD_REASONS.fullmatch(w["reason"]) for w in _COLLECTED["withheld"])
    (report,) = _COLLECTED["report"]
    assert report["per_unit"]["units"] == 2 and report["per_unit"]["released_tokens_per_unit"]["max"] == 6


def test_identical_texts_under_a_test_seed_still_respect_the_cap(index_dir):
    """Under a test seed, priorities come from the record (its text inside a user's pipeline), so
    identical texts draw equal priorities; their join ids must still differ, or one admission would
    release both copies."""
    import apache_beam as beam

    import dptext

    elements = [{"who": "ann", "text": "the cat sat"}] * 10
    _COLLECTED.clear()
    with beam.Pipeline("DirectRunner") as p:
        private = p | beam.Create(elements) | dptext.Privatize(
            index_dir, mechanism="tem", epsilon=2.0, text_field="text", privacy_unit="who", max_tokens_per_unit=7,
            test_seed=5,
        )  # fmt: skip
        for name in ("documents", "withheld"):
            getattr(private, name) | f"List{name}" >> beam.combiners.ToList() | f"Keep{name}" >> beam.Map(_keep, name)
    assert len(_COLLECTED["documents"]) == 2 and len(_COLLECTED["withheld"]) == 8


def test_a_capped_job_shuffles_its_documents_once(index_dir, tmp_path):
    """--rebalance true shuffles the batches before perturbing; with a cap the join has already
    spread the documents by random ids, so the graph has no second shuffle (without a cap it does)."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from dptext.pipeline.options import DPTextOptions
    from dptext.pipeline.run import build_pipeline, prepare

    skewed_corpus(tmp_path / "in.jsonl", documents=10)

    def labels(*extra):
        argv = ["--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "o" / "c"), "--index"]
        argv += [str(index_dir), *MECHANISM, "--privacy-unit", "user", "--rebalance", "true", *extra]
        options = PipelineOptions(argv)
        p = beam.Pipeline(options=options)
        build_pipeline(p, options.view_as(DPTextOptions), prepare(options.view_as(DPTextOptions)))
        found, todo = [], [p._root_transform()]
        while todo:
            node = todo.pop()
            found.append(node.full_label)
            todo.extend(node.parts)
        return found

    assert any(label.endswith("/Rebalance") for label in labels())
    capped = labels("--max-tokens-per-unit", "5")
    assert not any(label.endswith("/Rebalance") for label in capped)
    assert any(label.endswith("PrivacyUnits/JoinDecisions") for label in capped)
