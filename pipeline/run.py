"""The dptext job: read -> perturb -> write, accounting -> report, dead letter -> write."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import sys
import threading
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineState

from dptext.pipeline.engines.defaults import EngineRun, apply_engine_defaults
from dptext.pipeline.io import ParseRecordFn, ReadRecords, WriteDeadLetter, WriteDocuments, check_inputs, parquet_schema
from dptext.pipeline.ledger import LedgerConflict
from dptext.pipeline.options import (
    DPTextOptions,
    check_runner,
    check_unknown_options,
    option_error,
    parse_pipeline_options,
    rebalance,
    validate,
)
from dptext.pipeline.outputs import check_input_is_not_output, check_prefix, claim, remove_outputs
from dptext.pipeline.privatize import Privatize
from dptext.pipeline.report import ReportContext, WriteReport, add_metrics_to_report, job_counters
from dptext.pipeline.units import prepare_units, write_unit_outputs
from dptext.transforms.beam import DEAD_LETTER, DOCUMENTS
from dptext.transforms.config import InvalidParameter, JobConfig


@dataclass(frozen=True)
class Prepared:
    """What the driver fixed before the job starts."""

    fmt: str
    context: ReportContext  # holds the JobConfig every worker receives
    parquet_schema: object = None  # pyarrow.Schema of Parquet input
    ledger: object = None  # the LedgerRun of --budget-ledger (pipeline/ledger.py)
    ledger_key: bytes | None = dataclasses.field(default=None, repr=False)  # DPTEXT_LEDGER_KEY

    @property
    def config(self) -> JobConfig:
        return self.context.config

    def with_config(self, config: JobConfig) -> "Prepared":
        return dataclasses.replace(self, context=dataclasses.replace(self.context, config=config))


def build_pipeline(p: beam.Pipeline, opts: DPTextOptions, job: Prepared) -> None:
    records = p | "ReadCorpus" >> ReadRecords(opts.input, job.fmt)
    parsed = records | "ParseRecords" >> beam.ParDo(ParseRecordFn(job.fmt, opts.text_field)).with_outputs(
        DEAD_LETTER, main=DOCUMENTS
    )
    private = parsed[DOCUMENTS] | "Privatize" >> Privatize.prepared(
        job.context, rebalance(p.options), job.ledger, job.ledger_key
    )
    written = [
        private.documents
        | "WriteDocuments" >> WriteDocuments(opts.output, job.fmt, opts.text_field, job.parquet_schema),
        private.report | "WriteReport" >> WriteReport(opts.output),
        (
            (parsed[DEAD_LETTER], private.dead_letter)
            | "MergeDeadLetter" >> beam.Flatten()
            | "WriteDeadLetter" >> WriteDeadLetter(opts.output)
        ),
    ]
    if private.withheld is not None:  # the ledger commits only after every output is written
        write_unit_outputs(private, opts.output, job.ledger, written)


def prepare(opts: DPTextOptions, engine: EngineRun | None = None) -> Prepared:
    """Everything checked and fixed on the driver before the job starts (fails fast, clearly)."""
    from dptext.pipeline.context import describe_job

    config = validate(opts)
    check_prefix(opts.output)
    fmt = check_inputs(opts.input, opts.input_format)
    check_input_is_not_output(opts.input, opts.output)
    schema = parquet_schema(opts.input, opts.text_field) if fmt == "parquet" else None
    try:
        context = describe_job(
            config,
            runner=opts.view_as(StandardOptions).runner,
            input=opts.input,
            output=opts.output,
            engine=engine.sentence() if engine else None,
        )
    except InvalidParameter as err:
        raise option_error(err) from None
    ledger, key = prepare_units(opts, context, fmt, schema)
    return Prepared(fmt, context, schema, ledger, key)


def run(argv=None, wait: bool = True) -> beam.runners.runner.PipelineResult:
    """Validate, build and run the job; wait=False submits and returns (Flex Template launcher)."""
    options = parse_pipeline_options(argv)
    check_unknown_options(sys.argv[1:] if argv is None else argv, options.view_as(StandardOptions).runner)
    check_runner(options.view_as(StandardOptions).runner)
    engine = apply_engine_defaults(options)  # Flink/Spark: the cached job server and a local engine
    return execute(options, prepare(options.view_as(DPTextOptions), engine), wait)


def execute(options: PipelineOptions, job: Prepared, wait: bool = True) -> beam.runners.runner.PipelineResult:
    """Run a prepared job. When waiting, the job's counters are added to the report at the end
    (the report is written inside the job, before its metrics are final)."""
    if options.view_as(StandardOptions).runner is None:
        options.view_as(StandardOptions).runner = "DirectRunner"
    opts = options.view_as(DPTextOptions)
    held = claim(opts.output, opts.overwrite)  # refuses or replaces existing outputs, before the job
    result = None
    try:
        try:
            p = beam.Pipeline(options=options)
            build_pipeline(p, opts, job)
            result = p.run()
            if wait:
                with _exit_on_sigterm():
                    result.wait_until_finish()
        except BaseException:  # a failed or interrupted job leaves nothing half-written
            if wait and result is not None:
                _cancel(result)
            try:
                remove_outputs(opts.output)
            except Exception as err:  # keep the job's own error; say what is left (paths only)
                logging.warning(
                    "dptext: could not remove the partial outputs under %s (%s)", opts.output, type(err).__name__
                )
            if wait and job.ledger is not None:  # the ledger keeps its version; this run's rows go
                conflict = job.ledger.conflict()
                job.ledger.discard()
                if conflict:
                    raise LedgerConflict(conflict) from None
            raise
        if wait:
            add_metrics_to_report(opts.output, job_counters(result))
    finally:
        held.release()
    return result


@contextlib.contextmanager
def _exit_on_sigterm():
    """While waiting for a submitted job: SIGTERM raises SystemExit(143), so the job is cancelled
    and the partial outputs removed before the process ends (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _cancel(result) -> None:
    """Best effort: cancel a job still running on its runner (a remote job outlives this process)."""
    try:
        if not PipelineState.is_terminal(result.state):
            result.cancel()
    except Exception:  # a runner without cancel, or a job that just ended
        pass
