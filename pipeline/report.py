"""The corpus privacy report (JSON + Markdown) from the combined accounting side output.

The driver fixes everything that does not depend on the corpus (mechanism, parameters,
guarantee, index identity) in a ReportContext; workers only combine counts. Nothing here ever
sees document text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import apache_beam as beam

from dptext.transforms.accounting import CorpusAccount, basic_bound, composed_bound
from dptext.transforms.audit import format_audit, json_safe
from dptext.transforms.config import JobConfig
from dptext.transforms.mechanisms.guarantee import Guarantee

OOV_STATEMENT = {
    "placeholder": "replaced by the fixed placeholder {placeholder!r}; the output shows where they were",
    "random": "replaced by a uniformly random vocabulary word, independent of the token",
    "keep": "KEPT AS THEY ARE: these tokens got no protection at all",
}


CASE_NOT_PROTECTED = (
    "the input's capitalisation: with --case keep a word found only lower-cased gets "
    'the input\'s Title or UPPER pattern back, so "W3" and "w3" give distinguishable outputs '
    "(--case lower removes this channel)"
)


@dataclass(frozen=True)
class ReportContext:
    """What the report says that does not depend on the corpus, fixed on the driver: the job's
    configuration and what it resolved to (the mechanism's parameters and guarantee, the index)."""

    config: JobConfig
    parameters: dict
    guarantee: Guarantee
    index: dict  # embedding id, sha256, n, d, Dmin, Dmax, source
    versions: dict
    runner: str = "DirectRunner"
    engine: str | None = None  # Flink or Spark: which engine and version ran, where, with which workers
    input: str | None = None  # what `dptext run` read and wrote; None inside a user's pipeline
    output: str | None = None

    @property
    def mechanism(self) -> str:
        return self.config.mechanism


class CorpusAccountCombineFn(beam.CombineFn):
    def create_accumulator(self):
        return CorpusAccount()

    def add_input(self, accumulator, accounts):
        for doc in accounts:  # one batch's per-document records
            accumulator.add(doc)
        return accumulator

    def merge_accumulators(self, accumulators):
        merged = CorpusAccount()
        for acc in accumulators:
            merged.merge(acc)
        return merged

    def extract_output(self, accumulator):
        return accumulator


def build_report(account: CorpusAccount, ctx: ReportContext, units=None, unit_policy=None, ledger=None) -> dict:
    """The report dict; with privacy units, `units` is the job's UnitsAccount and `unit_policy` its
    UnitPolicy (pipeline/units.py), which add the per-unit section and its sentences."""
    _count_report_built()
    per_token = ctx.guarantee.per_token_pure_epsilon
    percentiles = account.perturbed_percentiles()
    if per_token is None:
        bounds = {
            "per_token_pure_epsilon": None,
            "note": (
                "dptext states no vocabulary-wide per-token bound for this mechanism (see the guarantee: "
                f"{_what_the_guarantee_gives(ctx.guarantee)}), so no per-document bound is composed"
            ),
        }
    else:
        bounds = {
            "per_token_pure_epsilon": per_token,
            "basic": {k: basic_bound(v, per_token) for k, v in percentiles.items()},
            "composed_at_delta": {k: composed_bound(v, per_token, ctx.config.delta) for k, v in percentiles.items()},
            "delta": ctx.config.delta,
            "note": (
                "per document: basic composition (tokens x per-token epsilon, pure DP) and the optimal "
                "composition of the same pure per-token events at delta (Kairouz, Oh, Viswanath 2015)"
            ),
        }
    report = {
        "mechanism": ctx.mechanism,
        "parameters": ctx.parameters,
        "guarantee": ctx.guarantee.as_dict(),
        "index": ctx.index,
        "counts": {
            "documents": account.documents,
            "tokens": account.tokens,
            "perturbed": account.perturbed,
            "oov": account.oov,
        },
        "oov_policy": ctx.config.oov,
        "case_policy": ctx.config.case,
        "per_document_tokens_perturbed": percentiles,
        "per_document_bound": bounds,
        "quality_figures": {
            "note": "data-dependent figures of this corpus, NOT privacy guarantees",
            "fraction_of_perturbed_tokens_changed": (
                account.changed / account.perturbed if account.perturbed else None
            ),
        },
        "randomness": (
            "TEST SEED USED: outputs are reproducible and NOT private; never publish them"
            if ctx.config.test_seed_used
            else "OS entropy (numpy SeedSequence), fresh per worker process"
        ),
        "statement": plain_statement(ctx, account),
        "versions": ctx.versions,
        "runner": ctx.runner,
        "engine": ctx.engine,
        "input": ctx.input,
        "output": ctx.output,
    }
    if units is not None:
        from dptext.pipeline.units import units_section, units_statement

        section = units_section(units, unit_policy, ledger)
        report["counts"]["withheld"] = units.withheld
        report["per_unit"] = section
        report["statement"] += units_statement(section)
    return report


def plain_statement(ctx: ReportContext, account: CorpusAccount) -> list[str]:
    g = ctx.guarantee
    lines = [g.statement]
    oov = OOV_STATEMENT[ctx.config.oov].format(placeholder=ctx.config.placeholder)
    lines.append(f"Out-of-vocabulary tokens ({account.oov} of {account.tokens}) are {oov}.")
    not_protected = list(g.not_protected)
    if ctx.config.case == "keep":
        not_protected.append(CASE_NOT_PROTECTED)
    lines.append("Not protected: " + "; ".join(not_protected) + ".")
    if g.per_token_pure_epsilon is not None:
        lines.append(
            "The guarantee is per token; a document's words together leak more (see per_document_bound), "
            "and the same person writing many documents composes further."
        )
    else:
        lines.append(
            "dptext states no vocabulary-wide per-token bound for this mechanism, so none is composed per "
            "document; a document's words together reveal more than any one of them, and the same person "
            "writing many documents reveals more still."
        )
    if ctx.config.test_seed_used:
        lines.append("A test seed was used: this output is not private.")
    return lines


def render_markdown(report: dict) -> str:
    c = report["counts"]
    idx = report["index"]
    out = [f"# dptext privacy report: {report['mechanism']}", ""]
    out += ["## What is protected", ""] + [f"- {line}" for line in report["statement"]] + [""]
    if report.get("metrics"):
        out += ["## Beam metrics", "", "| counter | value |", "|---|---:|"]
        out += [f"| {k} | {NOT_REPORTED if v is None else format(v, ',')} |" for k, v in report["metrics"].items()]
        out += [""]
    out += ["## Mechanism", "", "| parameter | value |", "|---|---|"]
    out += [f"| {k} | {_fmt(v)} |" for k, v in report["parameters"].items()] + [""]
    out += _guarantee_markdown(Guarantee.from_dict(report["guarantee"]))
    out += ["## Embedding index", "", "| field | value |", "|---|---|"]
    out += [f"| {k} | {_fmt(v)} |" for k, v in idx.items()] + [""]
    out += [
        "## Counts",
        "",
        "| documents | tokens | perturbed | out of vocabulary |",
        "|---|---|---|---|",
        f"| {c['documents']} | {c['tokens']} | {c['perturbed']} | {c['oov']} |",
        "",
    ]
    out += [
        "## Per-document bound",
        "",
        "Tokens perturbed per document: "
        + ", ".join(f"{k} {v}" for k, v in report["per_document_tokens_perturbed"].items()),
        "",
    ]
    bounds = report["per_document_bound"]
    if bounds.get("per_token_pure_epsilon") is None:
        out += [bounds["note"], ""]
    else:
        out += [
            f"Per-token pure epsilon: {_fmt(bounds['per_token_pure_epsilon'])}. {bounds['note']}.",
            "",
            f"| percentile | basic epsilon | composed epsilon at delta={bounds['delta']:g} |",
            "|---|---|---|",
        ]
        out += [
            f"| {k} | {_fmt(bounds['basic'][k])} | {_fmt(bounds['composed_at_delta'][k])} |" for k in bounds["basic"]
        ] + [""]
    if report.get("per_unit"):
        out += _units_markdown(report["per_unit"])
    q = report["quality_figures"]
    out += [
        "## Quality (data-dependent, not a guarantee)",
        "",
        f"Fraction of perturbed tokens changed: {_fmt(q['fraction_of_perturbed_tokens_changed'])}",
        "",
    ]
    out += [
        "## Run",
        "",
        f"- randomness: {report['randomness']}",
        f"- runner: {report['runner']}",
        *([f"- engine: {report['engine']}"] if report.get("engine") else []),
        f"- versions: {', '.join(f'{k} {v}' for k, v in report['versions'].items())}",
        f"- input: {report['input']}",
        f"- output: {report['output']}",
        "",
    ]
    return "\n".join(out)


def _units_markdown(section: dict) -> list[str]:
    out = [
        "## Per unit",
        "",
        f"Privacy unit field {section['field']!r}: {section['units']} units, {section['documents']} documents, "
        f"{section['withheld']} withheld. Word tokens released per unit: "
        + ", ".join(f"{k} {v}" for k, v in section["released_tokens_per_unit"].items()),
        "",
    ]
    bound = section.get("bound")
    if bound is None:
        return out + [section["bound_note"], ""]
    out += [
        f"| percentile | tokens | basic epsilon | composed epsilon at delta={bound['delta']:g} |",
        "|---|---|---|---|",
    ]
    out += [
        f"| {k} | {v} | {_fmt(bound['basic'][k])} | {_fmt(bound['composed_at_delta'][k])} |"
        for k, v in section["released_tokens_per_unit"].items()
    ]
    cap = section.get("cap")
    if cap is not None and "basic" in cap:
        out.append(f"| every unit (cap) | {cap['tokens']} | {_fmt(cap['basic'])} | {_fmt(cap['composed_at_delta'])} |")
    out.append("")
    if cap is not None:
        out += [f"Admission rule: {cap['rule']}.", ""]
    ledger = section.get("ledger")
    if ledger:
        out += [f"Budget ledger: {_fmt(ledger)}", ""]
    return out


def _guarantee_markdown(g: Guarantee) -> list[str]:
    out = ["## Guarantee", "", f"- kind: {g.kind}", f"- rate: {_fmt(g.rate)}"]
    if g.claimed is not None:
        figures = ", ".join(f"{k} {_fmt(v)}" for k, v in g.claimed.figures.items())
        out.append(f"- the paper's claim: {g.claimed.statement} ({figures})")
    if g.basis:
        out.append(f"- basis: {g.basis}")
    per_token = g.per_token_pure_epsilon
    out.append(f"- per-token pure epsilon: {_fmt(per_token) if per_token is not None else 'none stated'}")
    out.append("")
    audited = g.audited
    if isinstance(audited, list) and audited:
        out += [
            "Exact audit on vocabularies drawn from this embedding: local figures, not a bound over the whole "
            "vocabulary (worst log-ratio over all pairs; worst per unit distance; within K nearest neighbours; "
            "max hockey-stick delta at epsilon x distance; delta profile d(eps')):",
            "",
            "```",
            format_audit(audited),
            "```",
            "",
        ]
    elif audited:
        out += [
            "Audit (every figure is in the JSON report):",
            "",
            "```",
            json.dumps(audited, indent=1, ensure_ascii=False)[:4000],
            "```",
            "",
        ]
    if g.delta_at_distance:
        out += [
            "Computed in closed form for two words at distance D < R:",
            "",
            "| D | epsilon x D | delta(D) |",
            "|---|---|---|",
        ]
        out += [f"| {D} | {_fmt(v['epsilon'])} | {_fmt(v['delta'])} |" for D, v in g.delta_at_distance.items()]
        out.append("")
    return out


def _what_the_guarantee_gives(g: Guarantee) -> str:
    """In a few words, what the guarantee states in place of a vocabulary-wide per-token bound."""
    basis = g.basis
    if basis.startswith("audited (local"):
        return "local figures from an exact audit"
    if basis.startswith("audited"):
        return "an approximate sampler and the audited distance to the distribution it approximates"
    if basis.startswith("computed"):
        return "a bound for pairs of words closer than a radius, computed in closed form"
    return "its statement"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def report_json(report: dict) -> str:
    """The JSON report, RFC 8259 throughout: a bound that overflows float64 (a huge per-token epsilon
    times many tokens) is written as the string "inf", never as the non-standard Infinity."""
    return json.dumps(json_safe(report), indent=2, ensure_ascii=False, default=str, allow_nan=False) + "\n"


def report_paths(prefix: str) -> tuple[str, str]:
    return prefix + ".privacy_report.json", prefix + ".privacy_report.md"


class BuildReport(beam.PTransform):
    """Every document's account -> exactly one element: the privacy report dict (an empty input
    gives the report of an empty corpus)."""

    def __init__(self, context: ReportContext, units=None):
        super().__init__()
        self.context = context
        self.units = units  # (UnitPolicy, ledger dict or None, PCollection of one UnitsAccount), or None

    def expand(self, accounts):
        combined = accounts | "CombineAccounts" >> beam.CombineGlobally(CorpusAccountCombineFn())
        if self.units is None:
            return combined | "Report" >> beam.Map(build_report, self.context)
        policy, ledger, units = self.units
        return combined | "Report" >> beam.Map(
            build_report, self.context, beam.pvalue.AsSingleton(units), policy, ledger
        )


class WriteReport(beam.PTransform):
    """The report dict -> PREFIX.privacy_report.json and .md."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def expand(self, reports):
        return reports | "WriteReportFiles" >> beam.Map(write_report, self.prefix)


def write_report(report: dict, prefix: str) -> str:
    from dptext.pipeline.io import write_text_file

    json_path, md_path = report_paths(prefix)
    write_text_file(json_path, report_json(report))
    write_text_file(md_path, render_markdown(report))
    return json_path


METRIC_ORDER = ("documents", "tokens", "perturbed", "oov", "dead_lettered", "bytes_in", "bytes_out", "batch_retries")


def job_counters(result) -> dict:
    """The job's dptext counters (counts only), each summed over the steps that increment it.
    A runner that reports no counters through Beam (the Spark job server's portable runner)
    gets None for each: "not reported", never a zero that reads like an empty corpus."""
    from apache_beam.metrics.metric import MetricsFilter

    from dptext.transforms.beam import METRICS_NAMESPACE

    reported: dict = {}
    for c in result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]:
        reported[c.key.metric.name] = reported.get(c.key.metric.name, 0) + (c.committed or 0)
    if not reported.pop(REPORT_MARKER, 0):  # every job builds one report, so its runner hid the count
        return dict.fromkeys(METRIC_ORDER)
    return {**dict.fromkeys(METRIC_ORDER, 0), **reported}


# Incremented once by the step that builds the report: tells a runner that reports counters
# from one that does not (the other counters may all be absent in a job over an empty corpus).
REPORT_MARKER = "reports_built"


def _count_report_built() -> None:
    from apache_beam.metrics import Metrics

    from dptext.transforms.beam import METRICS_NAMESPACE

    Metrics.counter(METRICS_NAMESPACE, REPORT_MARKER).inc()  # a no-op outside a running job


NOT_REPORTED = "not reported by this runner"


def format_counters(counters: dict) -> str:
    return "\n".join(
        f"  {name:<14} {NOT_REPORTED if value is None else format(value, ','):>14}" for name, value in counters.items()
    )


def add_metrics_to_report(prefix: str, counters: dict) -> None:
    """Record the final Beam counters in the JSON and Markdown reports written by the job."""
    from apache_beam.io.filesystems import FileSystems

    from dptext.pipeline.io import write_text_file

    json_path, md_path = report_paths(prefix)
    with FileSystems.open(json_path) as handle:
        report = json.loads(handle.read().decode("utf-8"))
    report["metrics"] = counters
    write_text_file(json_path, report_json(report))
    write_text_file(md_path, render_markdown(report))
