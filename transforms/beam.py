"""PerturbDocuments: the Beam step that applies a mechanism to batches of documents.

The only module that knows Beam's DoFn, Shared, BatchElements and Metrics for perturbation.
The index is loaded once per worker process through `shared.Shared` (memory-mapped, so the
processes on one machine share its pages); many documents' tokens go through one `perturb` call.
"""

from __future__ import annotations

import logging
import time
import zlib
from typing import NamedTuple, Optional

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.utils import shared

from dptext.transforms.accounting import DocumentAccount
from dptext.transforms.config import JobConfig, LoadedMechanism
from dptext.transforms.tokenize import WORD, apply_case, case_pattern, rejoin, split_tokens

# Outputs of PerturbDocuments: Documents; tuples of DocumentAccount (one per document of a batch);
# dead-letter records.
DOCUMENTS, ACCOUNTING, DEAD_LETTER = "documents", "accounting", "dead_letter"
METRICS_NAMESPACE = "dptext"
# Errors worth retrying a batch for (an index page or a remote file that could not be read, a
# timeout); anything else is a bug or bad data and fails the bundle at once.
TRANSIENT_ERRORS = (OSError, TimeoutError)
TRANSIENT_ATTEMPTS = 3


class Document(NamedTuple):
    source: Optional[str]  # the input file (None for an element of a user's PCollection)
    offset: Optional[int]  # byte offset of the record in that file, or Parquet row number
    text: str
    record: object = None  # the rest of the record: the JSONL line around the text, the Parquet
    # row, or the dict a user's element was
    element: str = "document"  # what Privatize gives back: "document", "str" or "dict"


def text_field_problem(record: dict, text_field: str) -> Optional[str]:
    """Why a record's text field cannot be privatized (its dead-letter reason), or None."""
    if text_field not in record:
        return f"missing text field {text_field!r}"
    if not isinstance(record[text_field], str):
        return f"text field {text_field!r} is a {type(record[text_field]).__name__}, not a string"
    return None


def dead_letter(source: str, offset: int, reason: str) -> dict:
    """A dead-letter record: where the record was and why it failed, never its text."""
    return {"source": source, "offset": offset, "reason": reason}


class PerturbBatchFn(beam.DoFn):
    def __init__(self, config: JobConfig):
        self.config = config
        self._shared_handle = shared.Shared()
        self._documents = Metrics.counter(METRICS_NAMESPACE, "documents")
        self._tokens = Metrics.counter(METRICS_NAMESPACE, "tokens")
        self._perturbed = Metrics.counter(METRICS_NAMESPACE, "perturbed")
        self._oov = Metrics.counter(METRICS_NAMESPACE, "oov")
        self._dead = Metrics.counter(METRICS_NAMESPACE, "dead_lettered")
        self._retries = Metrics.counter(METRICS_NAMESPACE, "batch_retries")
        self._bytes_in = Metrics.counter(METRICS_NAMESPACE, "bytes_in")
        self._bytes_out = Metrics.counter(METRICS_NAMESPACE, "bytes_out")

    def setup(self):
        self._loaded = self._shared_handle.acquire(self.config.load, tag=repr(self.config))
        self._os_rng = np.random.default_rng()  # SeedSequence() from OS entropy, per process

    def _rng(self, first: Document) -> np.random.Generator:
        if self.config.test_seed is None:
            return self._os_rng
        # Test-only: a seed per batch from its first record, so reruns with the same batching
        # reproduce, and parallel workers never share a noise stream. An element of a user's
        # PCollection has no file position: its text stands in for it.
        if first.source is None:
            return np.random.default_rng([self.config.test_seed, zlib.crc32(first.text.encode("utf-8", "replace"))])
        return np.random.default_rng([self.config.test_seed, zlib.crc32(first.source.encode()), first.offset])

    def process(self, batch):
        # Everything is computed before anything is emitted, so a retried batch can neither
        # duplicate nor lose a record; only then are the counters incremented.
        for attempt in range(1, TRANSIENT_ATTEMPTS + 1):
            try:
                outputs, accounts, dead = self._perturb_batch(batch)
                break
            except TRANSIENT_ERRORS as err:
                if attempt == TRANSIENT_ATTEMPTS:
                    raise
                # The error's type only: its message could quote a path or, in principle, data.
                logging.warning(
                    "dptext: transient %s on a batch of %d documents (attempt %d of %d); retrying",
                    type(err).__name__,
                    len(batch),
                    attempt,
                    TRANSIENT_ATTEMPTS,
                )
                self._retries.inc()
                time.sleep(0.2 * attempt)
        yield from outputs
        self._dead.inc(dead)
        if not accounts:
            return
        # One accounting element per batch holding every document's record: the same records,
        # without a Beam element (and its overhead) per document.
        yield beam.pvalue.TaggedOutput(ACCOUNTING, tuple(accounts))
        self._documents.inc(len(accounts))
        self._tokens.inc(sum(a.tokens for a in accounts))
        self._perturbed.inc(sum(a.perturbed for a in accounts))
        self._oov.inc(sum(a.oov for a in accounts))
        self._bytes_in.inc(sum(len(doc.text.encode("utf-8")) for doc in batch))
        self._bytes_out.inc(sum(len(out.text.encode("utf-8")) for out in outputs if isinstance(out, Document)))

    def _perturb_batch(self, batch):
        """(outputs to emit, accounts, dead-lettered count) of one batch; emits nothing."""
        outputs, short, accounts, dead = [], [], [], 0
        for doc in batch:
            if len(doc.text) <= self.config.max_doc_chars:
                short.append(doc)
                continue
            perturbed, account = self._perturb_long(doc)
            if account is None:
                dead += 1
                outputs.append(beam.pvalue.TaggedOutput(DEAD_LETTER, perturbed))
                continue
            outputs.append(perturbed)
            accounts.append(account)
        if short:
            texts, short_accounts = perturb_texts(
                [d.text for d in short], self._loaded, self.config, self._rng(short[0])
            )
            outputs += [doc._replace(text=text) for doc, text in zip(short, texts)]
            accounts += short_accounts
        return outputs, accounts, dead

    def _perturb_long(self, doc: Document):
        """(perturbed document, its account), or (dead-letter record, None)."""
        limit = self.config.max_doc_chars
        chunks = split_long_text(doc.text, limit) if self.config.long_docs == "split" else None
        if chunks is None:
            reason = f"document of {len(doc.text)} characters exceeds --max-doc-chars={limit}"
            if self.config.long_docs == "split":
                reason += " and has a word longer than that, so it cannot be split"
            return dead_letter(doc.source, doc.offset, reason), None
        # Chunks end between words, so perturbing them one by one and rejoining is the same as
        # perturbing the whole document, with memory bounded by the chunk size.
        parts, part_accounts, rng = [], [], self._rng(doc)
        for chunk in chunks:
            (text,), (account,) = perturb_texts([chunk], self._loaded, self.config, rng)
            parts.append(text)
            part_accounts.append(account)
        return doc._replace(text="".join(parts)), DocumentAccount.total(part_accounts)


def split_long_text(text: str, limit: int) -> list[str] | None:
    """Chunks of at most `limit` characters, cut only where a word does not continue across the
    cut; None when some word is longer than the limit."""
    chunks, start = [], 0
    while len(text) - start > limit:
        cut = start + limit
        while cut > start and WORD.match(text[cut - 1]) and WORD.match(text[cut]):
            cut -= 1
        if cut == start:
            return None
        chunks.append(text[start:cut])
        start = cut
    chunks.append(text[start:])
    return chunks


def perturb_texts(
    texts: list[str], loaded: LoadedMechanism, config: JobConfig, rng: np.random.Generator
) -> tuple[list[str], list[DocumentAccount]]:
    """Tokenize, look up, perturb every in-vocabulary token in one call, apply OOV policy, rejoin."""
    index, mechanism = loaded.index, loaded.mechanism
    parts = [split_tokens(t) for t in texts]
    words = [w for p in parts for w in p.words]
    ids = index.ids(words)
    # Look up as is, then lower-cased.
    missing = np.flatnonzero(ids < 0)
    lower_ids = index.ids([words[i].lower() for i in missing.tolist()])
    ids[missing] = lower_ids
    lowered = np.zeros(len(words), dtype=bool)
    lowered[missing[lower_ids >= 0]] = True
    in_vocab = ids >= 0
    out_ids = np.full(len(words), -1, dtype=np.int32)
    out_ids[in_vocab] = mechanism.perturb(ids[in_vocab], rng)
    oov = ~in_vocab
    if config.oov == "random":
        out_ids[oov] = rng.integers(0, index.n, int(oov.sum()), dtype=np.int32)
    out_words = _output_words(words, out_ids, in_vocab, lowered, index, config)

    ends = np.cumsum([len(p.words) for p in parts])
    starts = ends - np.diff(ends, prepend=0)
    per_doc = {
        name: _segment_sums(flags, starts, ends)
        for name, flags in (("perturbed", in_vocab), ("changed", in_vocab & (out_ids != ids)), ("oov", oov))
    }
    outputs = [rejoin(out_words[a:b], p.separators) for p, a, b in zip(parts, starts.tolist(), ends.tolist())]
    accounts = [
        DocumentAccount(b - a, *counts)
        for a, b, *counts in zip(
            starts.tolist(), ends.tolist(), per_doc["perturbed"], per_doc["changed"], per_doc["oov"]
        )
    ]
    return outputs, accounts


def _segment_sums(flags: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> list[int]:
    """Number of true flags in each [start, end) segment."""
    running = np.concatenate(([0], np.cumsum(flags)))
    return (running[ends] - running[starts]).tolist()


def _output_words(words, out_ids, in_vocab, lowered, index, config) -> list[str]:
    vocab = index.vocabulary
    # "keep": OOV tokens (out id -1) stay as they are.
    out = [vocab[i] if i >= 0 else w for i, w in zip(out_ids.tolist(), words)]
    replaced = out_ids >= 0  # mechanism outputs and random OOV replacements
    if config.case == "lower":
        for i in np.flatnonzero(replaced):
            out[i] = out[i].lower()
    else:
        # A word found only lower-cased, or a random OOV replacement, takes the input's case.
        for i in np.flatnonzero(lowered | (~in_vocab & replaced)):
            out[i] = apply_case(out[i], case_pattern(words[i]))
    if config.oov == "placeholder":
        for i in np.flatnonzero(~in_vocab):
            out[i] = config.placeholder
    return out


class PerturbDocuments(beam.PTransform):
    """Documents -> perturbed documents, with accounting and dead-letter side outputs."""

    def __init__(self, config: JobConfig, rebalance: bool = True):
        super().__init__()
        self.config, self.rebalance = config, rebalance

    def expand(self, documents):
        batch_chars = self.config.batch_chars
        batches = documents | "BatchDocuments" >> beam.BatchElements(
            min_batch_size=max(1, batch_chars // 8),
            max_batch_size=batch_chars,
            element_size_fn=lambda doc: max(1, len(doc.text)),
        )
        if self.rebalance:
            # A fusion break: without it each batch is perturbed by the worker that read it, so a
            # corpus in few splits (one gzip file, a few shards, a runner that hands out whole
            # restrictions) runs on few workers; shuffled batches spread evenly over all of them.
            batches = batches | "Rebalance" >> beam.Reshuffle()
        return batches | "PerturbBatches" >> beam.ParDo(PerturbBatchFn(self.config)).with_outputs(
            ACCOUNTING, DEAD_LETTER, main=DOCUMENTS
        )
