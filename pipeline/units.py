"""Privacy units: who wrote each document, how many word tokens each unit releases, and the cap.

`PrivacyUnits` sits between reading and perturbing. Every document is keyed by its unit (the
--privacy-unit field, hashed at once: HMAC-SHA256 under the ledger key, or a keyed BLAKE2b under a
per-run random key without a ledger, so no raw unit id is ever a shuffle key) and its word tokens
are counted with the tokenizer the mechanism uses. Without a cap it only sums tokens per unit.

With a cap (--max-tokens-per-unit N and/or what a unit's --unit-budget has left), documents are
admitted per unit by this rule:
  1. a document with more than C word tokens is withheld (C: N, or the tokens the budget admits
     when it is smaller); a document with no word token is always admitted (it releases none);
  2. the unit's other documents are put in a uniformly random order (independent 63-bit priorities
     from the OS), and admitted in that order while the unit's running total stays within its
     allowance (C, or less when its ledger spend leaves less); the first document that would pass
     it, and every later one, is withheld.
The rule needs only each unit's shortest prefix in priority order whose total passes the allowance,
so one CombinePerKey holds at most C + 1 small (priority, tokens, id) records per unit, never a
text, whatever the unit's number of documents. The admitted ids are joined back to the documents
(keyed by a random 128-bit id) with one GroupByKey, which holds one document per key.

Per-unit released tokens go into one global combine: a count of units per released-token value.
Its size is the number of distinct values, at most sqrt(2 x total tokens) (distinct positive
integers summing to at most the total), so it stays small for any number of units.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import zlib
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import NamedTuple, Optional

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from dptext.pipeline.ledger import LedgerConflict, LedgerVersion, allowance, read_rows
from dptext.pipeline.outputs import remove_outputs
from dptext.transforms.accounting import basic_bound, composed_bound, histogram_percentiles
from dptext.transforms.beam import DEAD_LETTER, DOCUMENTS, METRICS_NAMESPACE, Document, dead_letter, split_long_text
from dptext.transforms.tokenize import split_tokens

WITHHELD, CANDIDATES, PENDING, UNIT_TOKENS = "withheld", "candidates", "pending", "unit_tokens"
# Elements of the per-unit combine.
_DOC, _PRESENT, _SPENT = 0, 1, 2


class _JsonInt(str):
    """A JSON integer kept as its digits (no size limit)."""


class _Fields(dict):
    """A JSON object whose fields include repeated names (`repeated`); other objects stay plain dicts."""

    def __init__(self, pairs):
        super().__init__(pairs)
        self.repeated = {n for n, c in Counter(n for n, _ in pairs).items() if c > 1}


def _object(pairs):
    fields = dict(pairs)
    return fields if len(fields) == len(pairs) else _Fields(pairs)


_DECODE_RECORD = json.JSONDecoder(
    parse_int=_JsonInt, parse_float=Decimal, parse_constant=Decimal, object_pairs_hook=_object
).decode


def unit_of(doc: Document, field_name: str) -> tuple[Optional[str], Optional[str]]:
    """(unit id, None) or (None, the dead-letter reason). A string or an integer names a unit (the
    integer 42 and the string "42" name the same one); anything else is refused, never guessed."""
    record = doc.record
    if isinstance(record, dict):
        fields = record
    elif record is not None and hasattr(record, "prefix"):  # a JSONL line without its text value
        try:
            fields = _DECODE_RECORD(record.prefix + '""' + record.suffix)
        except (ValueError, RecursionError):
            return None, f"privacy unit field {field_name!r} could not be read"
    else:
        return None, f"a plain text record has no privacy unit field {field_name!r}"
    if field_name not in fields:
        return None, f"missing privacy unit field {field_name!r}"
    if field_name in getattr(fields, "repeated", ()):  # which of two values names the person?
        return None, f"privacy unit field {field_name!r} appears more than once in the object"
    value = fields[field_name]
    if isinstance(value, bool) or value is None:
        kind = "null" if value is None else "a bool"
    elif isinstance(value, (int, _JsonInt)):
        return str(value), None
    elif isinstance(value, str):
        if value:
            return value, None
        kind = "an empty string"
    else:
        kind = "a float" if isinstance(value, (float, Decimal)) else f"a {type(value).__name__}"
    return None, f"privacy unit field {field_name!r} is {kind}; it must be a non-empty string or an integer"


@dataclass(frozen=True)
class UnitPolicy:
    """What the units step needs on every worker (small; the ledger key travels in the job)."""

    field: str
    hash_key: bytes = field(repr=False)  # HMAC key of the ledger, or a random per-run key
    ledger: bool = False  # hash_key is the ledger's (HMAC-SHA256, hex), else keyed BLAKE2b
    max_tokens: Optional[int] = None  # --max-tokens-per-unit
    unit_budget: Optional[float] = None
    per_token_epsilon: Optional[float] = None
    max_doc_chars: int = 1_000_000
    long_docs: str = "split"
    test_seed: Optional[int] = None
    delta: float = 1e-6

    @property
    def bounding(self) -> bool:
        return self.max_tokens is not None or self.unit_budget is not None

    @property
    def cap(self) -> Optional[int]:
        """C: the most word tokens any unit may release in this run (None: no cap)."""
        caps = [self.max_tokens] if self.max_tokens is not None else []
        if self.unit_budget is not None:
            caps.append(allowance(0.0, self.unit_budget, self.per_token_epsilon))
        return min(caps) if caps else None

    def key(self, unit: str) -> str:
        if self.ledger:
            return hmac.new(self.hash_key, unit.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
        return hashlib.blake2b(unit.encode("utf-8", "surrogatepass"), key=self.hash_key, digest_size=16).hexdigest()

    def allowance(self, spent: Optional[float]) -> int:
        """Tokens a unit may release in this run, given what its ledger row says it spent."""
        cap = self.cap
        if self.unit_budget is None or spent is None:
            return cap
        return min(cap, allowance(spent, self.unit_budget, self.per_token_epsilon))

    def withheld_reason(self) -> str:
        if self.unit_budget is None:
            return (
                f"its unit reached --max-tokens-per-unit {self.max_tokens} (documents admitted in a uniformly "
                "random order until the next one would pass it)"
            )
        return (
            "its unit reached its allowance: what is left of --unit-budget in the ledger"
            + (f", or --max-tokens-per-unit {self.max_tokens}" if self.max_tokens is not None else "")
            + " (documents admitted in a uniformly random order until the next one would pass it)"
        )


def random_policy_key(test_seed: Optional[int]) -> bytes:
    """The per-run key of unit hashes without a ledger (OS entropy; fixed under a test seed)."""
    if test_seed is not None:
        return hashlib.sha256(f"dptext test seed {test_seed}".encode()).digest()
    return os.urandom(32)


def word_tokens(doc: Document, policy: UnitPolicy) -> int:
    """The word tokens of a document that the mechanism will see; 0 for a document the perturbation
    step sends to the dead letter (too long and not splittable), which releases nothing."""
    text = doc.text
    if len(text) > policy.max_doc_chars and (
        policy.long_docs != "split" or split_long_text(text, policy.max_doc_chars) is None
    ):
        return 0
    return len(split_tokens(text).words)


class KeyByUnitFn(beam.DoFn):
    """Document -> its unit's key and word-token count; documents without a valid unit field go to
    the dead letter. Without bounding: the document (main) and (unit key, tokens). With bounding:
    documents with no token (main), longer than the cap (withheld), or candidates: (unit key,
    (priority, tokens, id)) for the admission combine and (id, document) pending the decision."""

    def __init__(self, policy: UnitPolicy):
        self.policy = policy
        self._dead = Metrics.counter(METRICS_NAMESPACE, "dead_lettered")
        self._withheld = Metrics.counter(METRICS_NAMESPACE, "withheld")

    def start_bundle(self):
        self._tokens = {}  # without bounding: unit key -> [documents, tokens] of this bundle

    def finish_bundle(self):
        # One (unit, totals) element per unit and bundle instead of one per document (bounded by
        # the bundle's units; the global window is the only one dptext uses).
        for key, (documents, tokens) in self._tokens.items():
            value = (key, (documents, tokens))
            yield beam.pvalue.TaggedOutput(UNIT_TOKENS, WindowedValue(value, MIN_TIMESTAMP, [GlobalWindow()]))
        self._tokens = {}

    def process(self, doc: Document):
        policy = self.policy
        unit, problem = unit_of(doc, policy.field)
        if problem is not None:
            self._dead.inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter(doc.source, doc.offset, problem))
            return
        key = policy.key(unit)
        tokens = word_tokens(doc, policy)
        if not policy.bounding:
            totals = self._tokens.setdefault(key, [0, 0])
            totals[0] += 1
            totals[1] += tokens
            yield doc
            return
        cap = policy.cap
        if tokens == 0:
            yield doc
            yield beam.pvalue.TaggedOutput(CANDIDATES, (key, (_PRESENT, 0)))
        elif tokens > cap:
            self._withheld.inc()
            reason = f"document has {tokens} word tokens, more than the {cap} a unit may release in this run"
            yield beam.pvalue.TaggedOutput(WITHHELD, dead_letter(doc.source, doc.offset, reason))
            yield beam.pvalue.TaggedOutput(CANDIDATES, (key, (_PRESENT, 1)))
        else:
            priority, doc_id = self._priority(doc), os.urandom(16)  # the id only joins: unique, never seeded
            yield beam.pvalue.TaggedOutput(CANDIDATES, (key, (_DOC, priority, tokens, doc_id)))
            yield beam.pvalue.TaggedOutput(PENDING, (doc_id, (_WAITING, pack(doc))))

    def _priority(self, doc: Document) -> int:
        """A uniform 63-bit priority (an int64, which Beam's coder writes as a varint; a larger int it
        pickles): OS entropy, or fixed per record under a test seed (from its file and offset, or its
        text inside a user's pipeline)."""
        if self.policy.test_seed is None:
            return int.from_bytes(os.urandom(8), "big") >> 1
        where = (doc.source or doc.text).encode("utf-8", "replace")
        seed = [self.policy.test_seed, zlib.crc32(where), doc.offset or 0]
        return int(np.random.default_rng(seed).integers(0, 2**63, dtype=np.int64))


def _prefix(items: list, allowance: int) -> list:
    """The shortest prefix, in priority order, of (priority, tokens, id) records whose total passes
    the allowance (or all of them): everything the admission rule needs to see."""
    out, total = [], 0
    for item in sorted(items):
        out.append(item)
        total += item[1]
        if total > allowance:
            break
    return out


class UnitOutcome(NamedTuple):
    spent: Optional[float]  # the unit's ledger row before this run (None: no row)
    documents: int  # documents of the unit in this run (0: a ledger row only)
    withheld: int
    released: int  # word tokens released in this run
    admitted: tuple  # ids of admitted candidates


class AdmitCombineFn(beam.CombineFn):
    """Per unit: its ledger spend, and the prefix in priority order that decides which documents fit."""

    def __init__(self, policy: UnitPolicy):
        self.policy = policy

    def create_accumulator(self):
        return [None, 0, 0, 0, []]  # spent, direct admits, direct withholds, candidates, kept prefix

    def add_input(self, acc, element):
        kind = element[0]
        if kind == _SPENT:
            acc[0] = (acc[0] or 0.0) + element[1]
        elif kind == _PRESENT:
            acc[2 if element[1] else 1] += 1
        else:
            acc[3] += 1
            acc[4].append(element[1:])
            if len(acc[4]) > 64 and len(acc[4]) > 2 * (self.policy.cap + 1):
                acc[4] = _prefix(acc[4], self.policy.cap)
        return acc

    def merge_accumulators(self, accumulators):
        merged = self.create_accumulator()
        for acc in accumulators:
            if acc[0] is not None:
                merged[0] = (merged[0] or 0.0) + acc[0]
            for i in (1, 2, 3):
                merged[i] += acc[i]
            merged[4].extend(acc[4])
        merged[4] = _prefix(merged[4], self.policy.cap)
        return merged

    def extract_output(self, acc):
        spent, direct, withheld, candidates, kept = acc
        allowance = self.policy.allowance(spent)
        admitted, released = [], 0
        for _, tokens, doc_id in sorted(kept):
            if released + tokens > allowance:
                break
            admitted.append(doc_id)
            released += tokens
        documents = direct + withheld + candidates
        return UnitOutcome(spent, documents, withheld + candidates - len(admitted), released, tuple(admitted))


_WAITING, _ADMIT = 0, 1  # the two kinds of value grouped by document id


def pack(doc: Document) -> tuple:
    """A Document as plain tuples for the shuffle (Beam's fast coder pickles a NamedTuple: 6.5 us
    against 1.2 us a round trip for a tweet)."""
    record = doc.record
    packed = ("J", record.prefix, record.suffix) if hasattr(record, "prefix") else ("R", record)  # a JsonLine
    return doc.source, doc.offset, doc.text, packed, doc.element


def unpack(packed: tuple) -> Document:
    # Imported here, not at the top: pipeline.io loads pyarrow, which dptext.Privatize need not.
    from dptext.pipeline.io import JsonLine

    source, offset, text, record, element = packed
    return Document(source, offset, text, JsonLine(record[1], record[2]) if record[0] == "J" else record[1], element)


class _JoinFn(beam.DoFn):
    """(document id, [the waiting document, and _ADMIT if it was admitted]) -> the document, or its
    withheld record."""

    def __init__(self, policy: UnitPolicy):
        self.reason = policy.withheld_reason()
        self._withheld = Metrics.counter(METRICS_NAMESPACE, "withheld")

    def process(self, element):
        _, values = element
        values = list(values)
        admit = any(v[0] == _ADMIT for v in values)
        for kind, packed in values:
            if kind != _WAITING:
                continue
            if admit:
                yield unpack(packed)
            else:
                self._withheld.inc()
                yield beam.pvalue.TaggedOutput(WITHHELD, dead_letter(packed[0], packed[1], self.reason))


@dataclass
class UnitsAccount:
    """The units of this run: counts and a histogram of released word tokens per unit."""

    units: int = 0
    documents: int = 0
    withheld: int = 0
    released: Counter = field(default_factory=Counter)  # released tokens -> units
    max_spent: Optional[float] = None  # with a ledger: the highest unit spend after this run

    def merge(self, other: "UnitsAccount") -> "UnitsAccount":
        self.units += other.units
        self.documents += other.documents
        self.withheld += other.withheld
        self.released.update(other.released)
        if other.max_spent is not None:
            self.max_spent = max(self.max_spent or 0.0, other.max_spent)
        return self

    def percentiles(self) -> dict:
        return histogram_percentiles(self.released, self.units)


class UnitsAccountCombineFn(beam.CombineFn):
    def __init__(self, per_token_epsilon: Optional[float] = None):
        self.per_token_epsilon = per_token_epsilon  # given with a ledger: track the highest spend

    def create_accumulator(self):
        return UnitsAccount()

    def add_input(self, acc, outcome: UnitOutcome):
        if self.per_token_epsilon is not None:
            spent = (outcome.spent or 0.0) + outcome.released * self.per_token_epsilon
            acc.max_spent = max(acc.max_spent or 0.0, spent)
        if outcome.documents:
            acc.units += 1
            acc.documents += outcome.documents
            acc.withheld += outcome.withheld
            acc.released[outcome.released] += 1
        return acc

    def merge_accumulators(self, accumulators):
        merged = UnitsAccount()
        for acc in accumulators:
            merged.merge(acc)
        return merged

    def extract_output(self, acc):
        return acc


class UnitsResult(NamedTuple):
    documents: beam.PCollection  # to perturb
    withheld: Optional[beam.PCollection]  # {"source", "offset", "reason"}; None without a cap or budget
    dead_letter: beam.PCollection
    account: beam.PCollection  # one UnitsAccount
    spend: Optional[beam.PCollection]  # (unit hash, spent after this run) for the ledger, or None


class _SumPerUnitFn(beam.CombineFn):
    """(documents, tokens) per unit, summed; plain tuples, which cross a shuffle several times faster
    than a NamedTuple (Beam pickles those)."""

    def create_accumulator(self):
        return (0, 0)

    def add_input(self, acc, value):
        return acc[0] + value[0], acc[1] + value[1]

    def merge_accumulators(self, accumulators):
        accumulators = list(accumulators)
        return sum(a[0] for a in accumulators), sum(a[1] for a in accumulators)

    def extract_output(self, acc):
        return UnitOutcome(None, acc[0], 0, acc[1], ())


def _admitted_ids(element):
    _, outcome = element
    return [(doc_id, (_ADMIT, None)) for doc_id in outcome.admitted]


def _spend_row(element, per_token_epsilon: float):
    key, outcome = element
    return key, (outcome.spent or 0.0) + outcome.released * per_token_epsilon


def _ledger_rows(path: str):
    for key, spent in read_rows(LedgerVersion("", 1, (path,))):
        yield key, (_SPENT, spent)


class PrivacyUnits(beam.PTransform):
    """Documents -> documents to perturb, withheld records, dead letter, the units account and the
    ledger's new rows (see the module docstring for the admission rule)."""

    def __init__(self, policy: UnitPolicy, ledger_files: tuple = ()):
        super().__init__()
        self.policy, self.ledger_files = policy, tuple(ledger_files)

    def expand(self, documents) -> UnitsResult:
        policy = self.policy
        keyed = documents | "KeyByUnit" >> beam.ParDo(KeyByUnitFn(policy)).with_outputs(
            DEAD_LETTER, WITHHELD, CANDIDATES, PENDING, UNIT_TOKENS, main=DOCUMENTS
        )
        if not policy.bounding:
            outcomes = keyed[UNIT_TOKENS] | "TokensPerUnit" >> beam.CombinePerKey(_SumPerUnitFn())
            account = (
                outcomes | "Values" >> beam.Values() | "UnitsAccount" >> beam.CombineGlobally(UnitsAccountCombineFn())
            )
            return UnitsResult(keyed[DOCUMENTS], None, keyed[DEAD_LETTER], account, None)  # nothing is withheld
        candidates = keyed[CANDIDATES]
        if self.ledger_files:
            spent = (
                documents.pipeline
                | "LedgerFiles" >> beam.Create(self.ledger_files)
                | "SpreadLedgerFiles" >> beam.Reshuffle()
                | "ReadLedger" >> beam.FlatMap(_ledger_rows)
            )
            candidates = (candidates, spent) | "WithLedger" >> beam.Flatten()
        outcomes = candidates | "AdmitPerUnit" >> beam.CombinePerKey(AdmitCombineFn(policy))
        admitted = outcomes | "AdmittedIds" >> beam.FlatMap(_admitted_ids)
        joined = (
            (keyed[PENDING], admitted)
            | "WithDecisions" >> beam.Flatten()
            | "JoinDecisions" >> beam.GroupByKey()
            | "Decide" >> beam.ParDo(_JoinFn(policy)).with_outputs(WITHHELD, main=DOCUMENTS)
        )
        to_perturb = (keyed[DOCUMENTS], joined[DOCUMENTS]) | "Admitted" >> beam.Flatten()
        withheld = (keyed[WITHHELD], joined[WITHHELD]) | "Withheld" >> beam.Flatten()
        account = (
            outcomes
            | "Values" >> beam.Values()
            | "UnitsAccount"
            >> beam.CombineGlobally(UnitsAccountCombineFn(policy.per_token_epsilon if policy.ledger else None))
        )
        spend = None
        if policy.ledger:
            spend = outcomes | "Spend" >> beam.Map(_spend_row, policy.per_token_epsilon)
        return UnitsResult(to_perturb, withheld, keyed[DEAD_LETTER], account, spend)


def units_section(account: UnitsAccount, policy: UnitPolicy, ledger: Optional[dict] = None) -> dict:
    """The report's per-unit section: released tokens per unit at p50/p90/p99/max and the composed
    bound at each, and (with a cap) the bound that holds for every unit. No unit id appears."""
    eps, delta = policy.per_token_epsilon, policy.delta
    percentiles = account.percentiles()
    section = {
        "field": policy.field,
        "units": account.units,
        "documents": account.documents,
        "withheld": account.withheld,
        "released_tokens_per_unit": percentiles,
        "note": (
            "word tokens released per unit in this run (every word token of a released document; the "
            "in-vocabulary ones are perturbed, so the bound composes over at most this many per-token events)"
        ),
    }
    if eps is None:
        section["bound"] = None
        section["bound_note"] = (
            "dptext states no vocabulary-wide per-token bound for this mechanism, so no bound composes per unit"
        )
    else:
        section["bound"] = {
            "per_token_pure_epsilon": eps,
            "delta": delta,
            "basic": {k: basic_bound(v, eps) for k, v in percentiles.items()},
            "composed_at_delta": {k: composed_bound(v, eps, delta) for k, v in percentiles.items()},
        }
    cap = policy.cap
    if cap is not None:
        section["cap"] = {
            "max_tokens_per_unit": policy.max_tokens,
            "unit_budget": policy.unit_budget,
            "tokens": cap,
            "rule": (
                "documents longer than the cap are withheld; the others are admitted in a uniformly random order "
                "while the unit's total stays within its allowance; the first that would pass it and every later "
                "one are withheld"
            ),
        }
        if eps is not None:
            section["cap"]["basic"] = basic_bound(cap, eps)
            section["cap"]["composed_at_delta"] = composed_bound(cap, eps, delta)
    if ledger:
        section["ledger"] = {**ledger, "max_spent": account.max_spent or 0.0}
    return section


def units_statement(section: dict) -> list[str]:
    """The report's sentences about units (for plain_statement)."""
    bound, cap = section.get("bound"), section.get("cap")
    name = section["field"]
    if bound is None:
        return [
            f"Privacy unit {name!r}: dptext states no per-token bound for this mechanism, so no bound composes "
            "for a unit's documents."
        ]
    delta = bound["delta"]
    lines = []
    if cap is not None:
        lines.append(
            f"Every unit's released tokens are protected by a composed epsilon of at most "
            f"{cap['composed_at_delta']:.6g} at delta {delta:g} (basic composition: {cap['basic']:.6g}): each unit "
            f"({name!r}) released at most {cap['tokens']} word tokens in this run."
        )
    else:
        most = section["released_tokens_per_unit"].get("max", 0)
        lines.append(
            f"No cap was set: the unit ({name!r}) with the most tokens released {most} word tokens, a composed "
            f"epsilon of {bound['composed_at_delta'].get('max', 0.0):.6g} at delta {delta:g}; this figure depends "
            "on the data and is no bound for units of another corpus (--max-tokens-per-unit sets one)."
        )
    ledger = section.get("ledger")
    if ledger:
        lines.append(
            f"Budget ledger: this run released tokens only from units whose spend stays within --unit-budget "
            f"{ledger['unit_budget']:g} (basic composition over every run recorded in the ledger); the highest "
            f"spend of any unit in the ledger is now {ledger['max_spent']:.6g}."
        )
    return lines


# ---------------------------------------------------------------------------------------------
# `dptext run`: driver-side checks, the withheld file and the ledger's new version.


def prepare_units(opts, context, fmt: str, schema=None):
    """(LedgerRun or None, HMAC key or None) for `dptext run`, after checking that the input can name
    units: refused for text input, and for Parquet input without the column."""
    from dptext.pipeline.errors import OptionsError
    from dptext.pipeline.ledger import LedgerError, LedgerRun, ledger_key

    config = context.config
    if config.privacy_unit is None:
        return None, None
    if fmt == "text":
        raise OptionsError(
            f"--privacy-unit {config.privacy_unit}: the input is text, one document per line with no fields; "
            "use JSONL or Parquet input with a field naming the person"
        )
    if schema is not None and config.privacy_unit not in schema.names:
        raise OptionsError(
            f"--privacy-unit {config.privacy_unit}: the Parquet input has no such column; columns: "
            + ", ".join(schema.names)
        )
    uri = getattr(opts, "budget_ledger", None)
    if uri is None:
        return None, None
    key = ledger_key(secret=getattr(opts, "ledger_key_secret", None))
    run = {
        "mechanism": config.mechanism,
        "epsilon": config.epsilon,
        "per_token_epsilon": context.guarantee.per_token_pure_epsilon,
        "unit_budget": config.unit_budget,
        "max_tokens_per_unit": config.max_tokens_per_unit,
        "output": context.output,
    }
    try:
        return LedgerRun.start(uri, key, run), key
    except LedgerError as err:
        raise OptionsError(str(err)) from None


def _ledger_line(element) -> str:
    key, spent = element
    return json.dumps({"unit": key, "spent": spent})


def commit_after_outputs(files, ledger, units, prefix, *written):
    """The last step of the job: every output is written (the side inputs), so commit the ledger. If
    another run committed first, this run's outputs are removed here, inside the job, before it fails:
    a job nobody waits for (a Flex Template launch) must not leave a release the ledger does not count."""
    try:
        return ledger.commit(list(files), units)
    except LedgerConflict:
        remove_outputs(prefix)
        raise


def write_unit_outputs(private, prefix: str, ledger, written: list) -> None:
    """PREFIX.withheld-*.jsonl and, with a ledger, its new version: the rows, then the commit record,
    created by a step that runs only after every output of the job is written."""
    from dptext.pipeline.io import json_text

    withheld = (
        private.withheld
        | "FormatWithheld" >> beam.Map(json_text)
        | "WriteWithheld" >> beam.io.WriteToText(prefix + ".withheld", file_name_suffix=".jsonl")
    )
    if ledger is None:
        return
    rows = private.ledger_spend
    files = (
        rows
        | "FormatLedger" >> beam.Map(_ledger_line)
        | "WriteLedger" >> beam.io.WriteToText(ledger.data_prefix, file_name_suffix=".jsonl")
    )
    units = rows | "CountLedgerUnits" >> beam.combiners.Count.Globally()
    after = [beam.pvalue.AsList(w) for w in [*written, withheld]]
    (
        files
        | "LedgerFileList" >> beam.combiners.ToList()
        | "CommitLedger" >> beam.Map(commit_after_outputs, ledger, beam.pvalue.AsSingleton(units), prefix, *after)
    )
