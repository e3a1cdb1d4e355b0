"""Every sentence of the privacy report is true for the mechanism it describes (issue 12 #16).

The report is built for every mechanism (and the variants whose guarantee differs: the MH sampler,
knn_exponential with a fixed k and with every word a candidate, tem with a binding cap), then what a
reader reads (the plain statement, the per-document note, the Markdown) is checked against the
guarantee it came from: a per-token sentence only with a per-token bound, "audit" only where an exact
audit produced the figures, "the paper's claim" only where there is one, metric DP only where proved.
"""

from __future__ import annotations

import json
import re

import pytest

from dptext.pipeline.report import ReportContext, build_report, render_markdown
from dptext.transforms import mechanisms
from dptext.transforms.accounting import CorpusAccount, DocumentAccount
from dptext.transforms.audit import json_safe
from dptext.transforms.config import JobConfig
from dptext.transforms.mechanisms.truncated_gumbel import smallest_feasible_epsilon


@pytest.fixture(scope="module")
def indexes(random_index):
    # 30 words with K = 5 (candidate sets smaller than the vocabulary), and 9 words with K = 8 (a table
    # holding the whole vocabulary, so knn_exponential can take every word as a candidate).
    return {
        "small_table": random_index(n=30, d=3, neighbours=5, seed=1),
        "whole_table": random_index(n=9, d=3, neighbours=8, seed=1),
    }


CASES = [(name, "small_table", {}) for name in mechanisms.NAMES] + [
    ("kde_prior", "small_table", {"sampler": "mh", "chain_length": 20}),
    ("knn_exponential", "small_table", {"candidates": 3}),
    ("knn_exponential", "whole_table", {"candidates": 8}),
    ("tem", "small_table", {"beta": 0.6}),
    ("distance_truncated_laplace", "whole_table", {"radius": 3.0}),
]


def _report(index, name, params) -> dict:
    eps = 1.5 * smallest_feasible_epsilon(index.n, index.dmin) if name == "truncated_gumbel" else 2.0
    mech = mechanisms.create(name, index, eps, **params)
    config = JobConfig(index_path=str(index.path), mechanism=name, epsilon=eps, mechanism_params=params)
    ctx = ReportContext(
        config=config,
        parameters=json_safe(mech.params()),
        guarantee=mech.guarantee(),
        index={"n": index.n, "d": index.d, "dmin": index.dmin, "dmax": index.dmax},
        versions={},
        runner="DirectRunner",
        input="in.txt",
        output="out",
    )
    account = CorpusAccount()
    for doc in (DocumentAccount(12, 10, 4, 2), DocumentAccount(5, 5, 1, 0), DocumentAccount(0, 0, 0, 0)):
        account.add(doc)
    return build_report(account, ctx)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name, which, params", CASES, ids=[f"{n}-{w}-{p}" for n, w, p in CASES])
def test_every_sentence_matches_the_guarantee(indexes, name, which, params):
    report = _report(indexes[which], name, params)
    g = report["guarantee"]
    md = render_markdown(report)
    note = report["per_document_bound"]["note"]
    text = "\n".join(report["statement"] + [note, md])
    assert g["statement"] and g["statement"] in report["statement"]
    assert "NaN" not in json.dumps(report) and '"nan"' not in json.dumps(report)

    per_token = g["per_token_pure_epsilon"]
    if per_token is None:
        # No per-token bound: no sentence may say the guarantee is per token, nothing is composed.
        assert "The guarantee is per token" not in text
        assert "basic" not in report["per_document_bound"] and "composed epsilon" not in md
        assert "per-token pure epsilon: none stated" in md
        assert "metric-DP" not in g["kind"] and (g["rate"] is None or "D < R" in g["kind"])
    else:
        # A per-token bound only where metric DP (or pure DP: custext with one output set) is proved for
        # every pair of words, and then stated.
        assert g["kind"] in ("metric-DP", "pure-DP") and g["basis"] == "proved"
        assert g["rate"] > 0 if g["kind"] == "metric-DP" else g["rate"] is None
        assert "for every pair of vocabulary words" in g["statement"]
        assert "The guarantee is per token" in text and f"Per-token pure epsilon: {per_token:.6g}" in md

    # "audit"/"audited" only where an exact audit produced the figures the report prints: the
    # figures a guarantee rests on (basis "audited ..."), or those confirming a proof (diffractor's
    # exact audit of its lists, kept under "exact_audit").
    audited = g.get("audited")
    confirms_proof = g.get("basis") == "proved" and isinstance(audited, dict) and bool(audited.get("exact_audit"))
    exact_audit = (str(g.get("basis", "")).startswith("audited") and bool(audited)) or confirms_proof
    mentions = re.findall(r"\baudit\w*", text, flags=re.IGNORECASE)
    assert bool(mentions) == exact_audit, (g.get("basis"), mentions)

    # The paper's claim only where the guarantee carries one (truncated_gumbel's calibration).
    assert ("the paper's claim" in md) == ("claimed" in g)

    # Figures that are computed are called computed, and shown.
    if str(g.get("basis", "")).startswith("computed"):
        assert "computed in closed form" in note and "Computed in closed form" in md
        for D in g["delta_at_distance"]:
            assert f"| {D} |" in md
    if g["kind"] == "approximate":
        assert g["statement"].startswith("approximate") and "proves no DP bound" in g["statement"]


def test_knn_exponential_sentences_follow_its_candidate_sets(indexes):
    """Fixed k < n - 1: infinite loss stated; k = n - 1: metric DP stated; never 'metric-DP (audited)'."""
    fixed = _report(indexes["small_table"], "knn_exponential", {"candidates": 3})["guarantee"]
    whole = _report(indexes["whole_table"], "knn_exponential", {"candidates": 8})["guarantee"]
    assert "infinite" in fixed["statement"] and fixed["worst_case_log_ratio"] == "inf"
    assert whole["kind"] == "metric-DP" and "whole vocabulary" in whole["statement"]
    assert "audit" not in whole["statement"]
