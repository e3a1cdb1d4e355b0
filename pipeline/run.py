"""The dptext job: read -> perturb -> write, accounting -> report, dead letter -> write."""
from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline.io import ParseRecordFn, ReadRecords, WriteDeadLetter, WriteDocuments, detect_format, input_files
from pipeline.options import DPTextOptions, check_runner, mechanism_params, validate
from pipeline.report import ReportContext, WriteReport
from transforms.beam import ACCOUNTING, DEAD_LETTER, DOCUMENTS, PerturbConfig, PerturbDocuments


def build_pipeline(p: beam.Pipeline, opts: DPTextOptions, fmt: str, config: PerturbConfig,
                   context: ReportContext) -> None:
    records = p | "ReadCorpus" >> ReadRecords(opts.input)
    parsed = records | "ParseRecords" >> beam.ParDo(ParseRecordFn(fmt, opts.text_field)).with_outputs(
        DEAD_LETTER, main=DOCUMENTS)
    perturbed = parsed[DOCUMENTS] | "PerturbDocuments" >> PerturbDocuments(config, opts.batch_chars)
    perturbed[DOCUMENTS] | "WriteDocuments" >> WriteDocuments(opts.output, fmt, opts.text_field)
    perturbed[ACCOUNTING] | "PrivacyReport" >> WriteReport(opts.output, context)
    ((parsed[DEAD_LETTER], perturbed[DEAD_LETTER])
     | "MergeDeadLetter" >> beam.Flatten()
     | "WriteDeadLetter" >> WriteDeadLetter(opts.output))


def prepare(opts: DPTextOptions) -> tuple[str, PerturbConfig, ReportContext]:
    """Everything checked and fixed on the driver before the job starts (fails fast, clearly)."""
    from pipeline.context import report_context
    from transforms import mechanisms
    from transforms.index import EmbeddingIndex

    validate(opts)
    input_files(opts.input)
    fmt = detect_format(opts.input) if opts.input_format == "auto" else opts.input_format
    index = EmbeddingIndex.load(opts.index)
    params = mechanism_params(opts)
    mechanism = mechanisms.create(opts.mechanism, index, opts.epsilon, **params)
    config = PerturbConfig(index_path=str(opts.index), mechanism=opts.mechanism, epsilon=opts.epsilon,
                           mechanism_params=tuple(sorted(params.items())), oov=opts.oov,
                           placeholder=opts.oov_placeholder, max_doc_chars=opts.max_doc_chars,
                           long_docs=opts.long_docs,
                           test_seed=opts.test_seed)
    return fmt, config, report_context(opts, index, mechanism)


def run(argv=None, wait: bool = True) -> beam.runners.runner.PipelineResult:
    """Validate, build and run the job; wait=False submits and returns (Flex Template launcher)."""
    options = PipelineOptions(argv)
    opts = options.view_as(DPTextOptions)
    check_runner(options.view_as(StandardOptions).runner)
    fmt, config, context = prepare(opts)
    if options.view_as(StandardOptions).runner is None:
        options.view_as(StandardOptions).runner = "DirectRunner"
    p = beam.Pipeline(options=options)
    build_pipeline(p, opts, fmt, config, context)
    result = p.run()
    if wait:
        result.wait_until_finish()
    return result
