"""The report's corpus-independent context, fixed on the driver from a JobConfig."""

from __future__ import annotations

import dataclasses

import apache_beam as beam
import numpy as np

from dptext.pipeline.options import runner_name
from dptext.pipeline.report import ReportContext
from dptext.transforms.audit import json_safe
from dptext.transforms.config import InvalidParameter, JobConfig


def describe_job(
    config: JobConfig,
    runner=None,
    input: str | None = None,
    output: str | None = None,
    index=None,
    engine: str | None = None,
) -> ReportContext:
    """Load the index (unless given), build the mechanism (which validates its parameters and the
    epsilon against the index) and fix what the report will say. The returned context's config
    carries the index's embedding id, which every worker checks against the index it loads."""
    from dptext.pipeline import __version__
    from dptext.transforms import mechanisms
    from dptext.transforms.index import EmbeddingIndex

    if index is None:
        index = EmbeddingIndex.load(config.index_path)
    check_placeholder(config, index)
    mechanism = mechanisms.create(config.mechanism, index, config.epsilon, **dict(config.mechanism_params))
    index.ensure_tables_stored()  # the mechanism's derived tables, beside the index: workers only read them
    manifest = index.manifest
    config = dataclasses.replace(config, embedding_id=manifest["embedding_id"])
    guarantee = mechanism.guarantee()
    check_unit_budget(config, guarantee)
    return ReportContext(
        config=config,
        parameters=json_safe(mechanism.params()),
        guarantee=guarantee,
        index={
            "path": config.index_path,
            "embedding_id": manifest["embedding_id"],
            "vectors_sha256": manifest["files"]["vectors.f32"]["sha256"],
            "n": manifest["n"],
            "d": manifest["d"],
            "dmin": manifest["dmin"],
            "dmax": manifest["dmax"],
            "neighbours": manifest["neighbours"],
            "source": manifest.get("source", {}),
        },
        versions={"dptext": __version__, "apache_beam": beam.__version__, "numpy": np.__version__},
        runner=runner_name(runner),
        engine=engine,
        input=input,
        output=output,
    )


def check_unit_budget(config: JobConfig, guarantee) -> None:
    """A budget is spent in per-token pure epsilons: refuse it for a mechanism that states none, and a
    budget too small for a single token."""
    if config.unit_budget is None:
        return
    per_token = guarantee.per_token_pure_epsilon
    if per_token is None:
        raise InvalidParameter(
            "unit_budget",
            f"cannot be spent with --mechanism {config.mechanism}: dptext states no vocabulary-wide per-token pure "
            "epsilon for it, so a unit's spend has no measure; use a mechanism whose guarantee states one (its "
            "report prints 'per-token pure epsilon'), e.g. multivariate_laplace, tem or santext",
        )
    if config.unit_budget < per_token:
        raise InvalidParameter(
            "unit_budget",
            f"{config.unit_budget:g} is below one token's pure epsilon {per_token:.6g} under this mechanism and "
            "epsilon: no unit could release a single token",
        )


def check_placeholder(config: JobConfig, index) -> None:
    """A placeholder made of vocabulary words would be indistinguishable from a perturbed word,
    so the report's "the output shows where they were" would be false: refuse it."""
    from dptext.transforms.tokenize import split_tokens

    if config.oov != "placeholder":
        return
    words = split_tokens(config.placeholder).words
    found = [w for w in words if index.id(w) >= 0 or index.id(w.lower()) >= 0]
    if found:
        raise InvalidParameter(
            "oov_placeholder",
            (
                f"{config.placeholder!r} holds the vocabulary word {found[0]!r}, so replaced tokens could not be told "
                "from perturbed words; choose a token outside the vocabulary such as <unk>"
            ),
        )
