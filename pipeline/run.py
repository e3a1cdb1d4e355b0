"""The dptext job: read -> perturb -> write, accounting -> report, dead letter -> write."""
from __future__ import annotations

from dataclasses import dataclass

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline.io import ParseRecordFn, ReadRecords, WriteDeadLetter, WriteDocuments, check_inputs, parquet_schema
from pipeline.options import DPTextOptions, check_runner, mechanism_params, rebalance, validate
from pipeline.report import ReportContext, WriteReport, add_metrics_to_report, job_counters
from transforms.beam import ACCOUNTING, DEAD_LETTER, DOCUMENTS, PerturbConfig, PerturbDocuments


@dataclass(frozen=True)
class Prepared:
    """What the driver fixed before the job starts."""
    fmt: str
    config: PerturbConfig
    context: ReportContext
    parquet_schema: object = None     # pyarrow.Schema of Parquet input


def build_pipeline(p: beam.Pipeline, opts: DPTextOptions, job: Prepared) -> None:
    records = p | "ReadCorpus" >> ReadRecords(opts.input, job.fmt)
    parsed = records | "ParseRecords" >> beam.ParDo(ParseRecordFn(job.fmt, opts.text_field)).with_outputs(
        DEAD_LETTER, main=DOCUMENTS)
    perturbed = parsed[DOCUMENTS] | "PerturbDocuments" >> PerturbDocuments(job.config, opts.batch_chars,
                                                                           rebalance(p.options))
    perturbed[DOCUMENTS] | "WriteDocuments" >> WriteDocuments(opts.output, job.fmt, opts.text_field,
                                                              job.parquet_schema)
    perturbed[ACCOUNTING] | "PrivacyReport" >> WriteReport(opts.output, job.context)
    ((parsed[DEAD_LETTER], perturbed[DEAD_LETTER])
     | "MergeDeadLetter" >> beam.Flatten()
     | "WriteDeadLetter" >> WriteDeadLetter(opts.output))


def prepare(opts: DPTextOptions) -> Prepared:
    """Everything checked and fixed on the driver before the job starts (fails fast, clearly)."""
    from pipeline.context import report_context
    from transforms import mechanisms
    from transforms.index import EmbeddingIndex

    validate(opts)
    fmt = check_inputs(opts.input, opts.input_format)
    schema = parquet_schema(opts.input, opts.text_field) if fmt == "parquet" else None
    index = EmbeddingIndex.load(opts.index)
    params = mechanism_params(opts)
    mechanism = mechanisms.create(opts.mechanism, index, opts.epsilon, **params)
    config = PerturbConfig(index_path=str(opts.index), mechanism=opts.mechanism, epsilon=opts.epsilon,
                           mechanism_params=tuple(sorted(params.items())), oov=opts.oov,
                           placeholder=opts.oov_placeholder, max_doc_chars=opts.max_doc_chars,
                           long_docs=opts.long_docs,
                           test_seed=opts.test_seed)
    return Prepared(fmt, config, report_context(opts, index, mechanism), schema)


def run(argv=None, wait: bool = True) -> beam.runners.runner.PipelineResult:
    """Validate, build and run the job; wait=False submits and returns (Flex Template launcher)."""
    options = PipelineOptions(argv)
    check_runner(options.view_as(StandardOptions).runner)
    return execute(options, prepare(options.view_as(DPTextOptions)), wait)


def execute(options: PipelineOptions, job: Prepared, wait: bool = True) -> beam.runners.runner.PipelineResult:
    """Run a prepared job. When waiting, the job's counters are added to the report at the end
    (the report is written inside the job, before its metrics are final)."""
    if options.view_as(StandardOptions).runner is None:
        options.view_as(StandardOptions).runner = "DirectRunner"
    opts = options.view_as(DPTextOptions)
    p = beam.Pipeline(options=options)
    build_pipeline(p, opts, job)
    result = p.run()
    if wait:
        result.wait_until_finish()
        add_metrics_to_report(opts.output, job_counters(result))
    return result
