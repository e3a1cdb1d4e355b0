"""dptext.Privatize: word-level differential privacy as one step of any Beam pipeline.

    result = texts | dptext.Privatize(index="gs://bucket/index", mechanism="tem", epsilon=3.0)
    result.documents     # the input's element type (str, dict or Document), text replaced
    result.dead_letter   # {"source", "offset", "reason"} dicts, never text
    result.report        # exactly one element: the privacy report dict
    result.withheld      # with privacy_unit and max_tokens_per_unit: {"source", "offset", "reason"}

`dptext run` is this transform between its readers and writers.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import StandardOptions

from dptext.pipeline.options import default_rebalance, runner_name
from dptext.pipeline.report import BuildReport, ReportContext
from dptext.pipeline.units import PrivacyUnits, UnitPolicy, random_policy_key
from dptext.transforms.beam import (
    ACCOUNTING,
    DEAD_LETTER,
    DOCUMENTS,
    METRICS_NAMESPACE,
    Document,
    PerturbDocuments,
    dead_letter,
    text_field_problem,
)
from dptext.transforms.config import JobConfig


class PrivatizeResult(NamedTuple):
    documents: beam.PCollection
    dead_letter: beam.PCollection
    report: beam.PCollection
    withheld: Optional[beam.PCollection] = None  # documents a unit's cap or budget held back (no text); None
    # without a cap or budget
    ledger_spend: Optional[beam.PCollection] = None  # (unit hash, spent after this run), with a ledger


class Privatize(beam.PTransform):
    """Replace every word of every element's text by the mechanism's draw.

    Elements are str (text_field None), dicts (text_field names the key holding the text; every
    other key rides along unchanged), or `Document`s (as `dptext run` passes them, with the file
    and offset that its dead letter names). Everything that can be checked is checked here,
    before the pipeline runs: epsilon, the mechanism and its parameters, the policies, and the
    index (loaded, hashes verified, epsilon checked against it).
    """

    def __init__(
        self,
        index: str,
        mechanism: str = "truncated_gumbel",
        epsilon: Optional[float] = None,
        text_field: Optional[str] = None,
        oov: str = "placeholder",
        *,
        placeholder: str = "<unk>",
        case: str = "keep",
        max_doc_chars: int = 1_000_000,
        long_docs: str = "split",
        batch_chars: int = 65536,
        delta: float = 1e-6,
        rebalance: Optional[bool] = None,
        test_seed: Optional[int] = None,
        privacy_unit: Optional[str] = None,
        max_tokens_per_unit: Optional[int] = None,
        **mechanism_params,
    ):
        from dptext.pipeline.context import describe_job

        config = JobConfig(
            index_path=str(index),
            mechanism=mechanism,
            epsilon=epsilon,
            mechanism_params=mechanism_params,
            text_field=text_field,
            oov=oov,
            placeholder=placeholder,
            case=case,
            max_doc_chars=max_doc_chars,
            long_docs=long_docs,
            batch_chars=batch_chars,
            delta=delta,
            test_seed=test_seed,
            privacy_unit=privacy_unit,
            max_tokens_per_unit=max_tokens_per_unit,
        )
        self.__init_from_context(describe_job(config), rebalance)

    @classmethod
    def prepared(
        cls, context: ReportContext, rebalance: Optional[bool] = None, ledger=None, ledger_key: Optional[bytes] = None
    ) -> "Privatize":
        """From a context the driver already built (`dptext run` validates and loads once); with a
        budget ledger, the LedgerRun that the job reads and the HMAC key of its unit hashes."""
        transform = cls.__new__(cls)
        transform.__init_from_context(context, rebalance, ledger, ledger_key)
        return transform

    def __init_from_context(self, context: ReportContext, rebalance: Optional[bool], ledger=None, ledger_key=None):
        super().__init__()
        self.context, self.rebalance, self.ledger = context, rebalance, ledger
        self.unit_policy = unit_policy(context, ledger_key)

    @property
    def config(self) -> JobConfig:
        return self.context.config

    def expand(self, elements) -> PrivatizeResult:
        runner = elements.pipeline.options.view_as(StandardOptions).runner or elements.pipeline.runner
        rebalance = default_rebalance(runner) if self.rebalance is None else self.rebalance
        context = self.context
        if context.input is None:  # inside a user's pipeline: record the runner it runs on
            context = dataclasses.replace(context, runner=runner_name(runner))
        docs = elements | "ToDocuments" >> beam.ParDo(_ToDocumentFn(self.config.text_field, self.label)).with_outputs(
            DEAD_LETTER, main=DOCUMENTS
        )
        to_perturb, dead_letters, units = docs[DOCUMENTS], [docs[DEAD_LETTER]], None
        if self.unit_policy is not None:
            files = self.ledger.base_files if self.ledger is not None else ()
            units = to_perturb | "PrivacyUnits" >> PrivacyUnits(self.unit_policy, files)
            to_perturb = units.documents
            dead_letters.append(units.dead_letter)
            # With a cap, the join has just shuffled every document by a random id: spread evenly
            # already, so a second shuffle of the batches would only cost.
            rebalance = rebalance and not self.unit_policy.bounding
        perturbed = to_perturb | "PerturbDocuments" >> PerturbDocuments(self.config, rebalance)
        documents = perturbed[DOCUMENTS] | "FromDocuments" >> beam.Map(_from_document, self.config.text_field)
        with_units = None if units is None else (self.unit_policy, self._ledger_summary(), units.account)
        report = perturbed[ACCOUNTING] | "PrivacyReport" >> BuildReport(context, with_units)
        dead = (*dead_letters, perturbed[DEAD_LETTER]) | "MergeDeadLetter" >> beam.Flatten()
        if units is None:
            return PrivatizeResult(documents, dead, report)
        return PrivatizeResult(documents, dead, report, units.withheld, units.spend)

    def _ledger_summary(self) -> Optional[dict]:
        if self.ledger is None:
            return None
        return {
            "uri": self.ledger.uri,
            "unit_budget": self.config.unit_budget,
            "version_read": self.ledger.base_version,
            "version_written": self.ledger.next_version,
        }


def unit_policy(context: ReportContext, ledger_key: Optional[bytes] = None) -> Optional[UnitPolicy]:
    """The units step's policy from the job's context (None without a privacy unit)."""
    config = context.config
    if config.privacy_unit is None:
        return None
    return UnitPolicy(
        field=config.privacy_unit,
        hash_key=ledger_key if ledger_key is not None else random_policy_key(config.test_seed),
        ledger=ledger_key is not None,
        max_tokens=config.max_tokens_per_unit,
        unit_budget=config.unit_budget,
        per_token_epsilon=context.guarantee.per_token_pure_epsilon,
        max_doc_chars=config.max_doc_chars,
        long_docs=config.long_docs,
        test_seed=config.test_seed,
        delta=config.delta,
    )


class _ToDocumentFn(beam.DoFn):
    """A str, dict or Document -> a Document, or a dead-letter record saying why not (never text)."""

    def __init__(self, text_field: Optional[str], source: str):
        self.text_field, self.source = text_field, source
        self._dead = Metrics.counter(METRICS_NAMESPACE, "dead_lettered")

    def process(self, element):
        if isinstance(element, Document):
            yield element
        elif self.text_field is None:
            if isinstance(element, str):
                yield Document(None, None, element, element="str")
            else:
                yield self._reject(f"element is a {type(element).__name__}, not a str (text_field is None)")
        elif not isinstance(element, dict):
            yield self._reject(f"element is a {type(element).__name__}, not a dict with {self.text_field!r}")
        elif problem := text_field_problem(element, self.text_field):
            yield self._reject(problem)
        else:
            yield Document(None, None, element[self.text_field], element, element="dict")

    def _reject(self, reason: str):
        self._dead.inc()
        return beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter(self.source, None, reason))


def _from_document(doc: Document, text_field: Optional[str]):
    """A perturbed Document back in its input's element type."""
    if doc.element == "str":
        return doc.text
    if doc.element == "dict":
        return {**doc.record, text_field: doc.text}
    return doc
