"""The report's corpus-independent context, fixed on the driver."""
from __future__ import annotations

import apache_beam as beam
import numpy as np

from dptext.pipeline.options import DPTextOptions
from dptext.pipeline.report import ReportContext
from dptext.transforms.audit import json_safe


def report_context(opts: DPTextOptions, index, mechanism) -> ReportContext:
    from dptext.pipeline import __version__
    from apache_beam.options.pipeline_options import StandardOptions

    manifest = index.manifest
    runner = opts.view_as(StandardOptions).runner or "DirectRunner"
    return ReportContext(
        mechanism=mechanism.name,
        parameters=json_safe(mechanism.params()),
        guarantee=mechanism.guarantee(),
        index={"path": str(opts.index), "embedding_id": manifest["embedding_id"],
               "vectors_sha256": manifest["files"]["vectors.f32"]["sha256"],
               "n": manifest["n"], "d": manifest["d"], "dmin": manifest["dmin"], "dmax": manifest["dmax"],
               "neighbours": manifest["neighbours"], "source": manifest.get("source", {})},
        oov_policy=opts.oov, placeholder=opts.oov_placeholder, delta=opts.delta, case_policy=opts.case,
        test_seed_used=opts.test_seed is not None,
        versions={"dptext": __version__, "apache_beam": beam.__version__, "numpy": np.__version__},
        runner=str(runner), input=opts.input, output=opts.output)
