"""`dptext` command line: run, build-index, audit, demo."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import warnings

# google-auth and google-api-core warn on import about the Python and grpcio versions that Beam
# pins: Google's support calendar, not this run, and it would bury the one line a user must read.
GOOGLE_SUPPORT_WARNINGS = ("google.auth.transport.grpc", "google.api_core._python_version_support")
for _module in GOOGLE_SUPPORT_WARNINGS:
    warnings.filterwarnings("ignore", category=FutureWarning, module=_module.replace(".", r"\."))


def _quiet_worker_processes() -> None:
    """The same filter for the processes Beam starts (SDK workers read it from the environment)."""
    entries = [f"ignore::FutureWarning:{module}" for module in GOOGLE_SUPPORT_WARNINGS]
    given = os.environ.get("PYTHONWARNINGS")
    os.environ["PYTHONWARNINGS"] = ",".join(([given] if given else []) + entries)


USAGE = """dptext COMMAND [options]

commands:
  run           privatize a corpus with a Beam pipeline (every Beam pipeline option passes through)
  build-index   build an index directory from an embedding file (word2vec text/binary, GloVe)
  audit         exact audit of truncated_gumbel on small vocabularies drawn from an index
  stats         N_w and S_w of a mechanism over a grid of epsilon (CSV, JSON, PNG); reads only the index
  calibrate     the epsilon whose median N_w reaches a target (compare mechanisms at matched deniability)
  demo          default embedding + public tweet sample, end to end
  template-metadata   write templates/metadata.json from the run options (--check: fail on drift)
  ledger        a budget ledger's per-unit spend percentiles and exhausted units (--ledger URI)

`dptext COMMAND --help` for each command's options."""


def _run(argv: list[str]) -> int:
    from dptext.pipeline.options import DPTextOptions

    if "--help" in argv or "-h" in argv:
        parser = argparse.ArgumentParser(
            prog="dptext run",
            description=(
                "Privatize a corpus. Every Apache Beam pipeline option (--runner, --direct_num_workers, "
                "--temp_location, ...) is accepted as well."
            ),
        )
        DPTextOptions._add_argparse_args(parser)
        parser.print_help()
        return 0
    from dptext.pipeline.run import run

    try:
        result = run(argv)
    except KeyboardInterrupt:  # the job removed its partial outputs on the way out
        print(f"dptext run: interrupted; no partial outputs left under {_output_prefix(argv)}", file=sys.stderr)
        return 128 + signal.SIGINT
    except RuntimeError as err:  # a portable runner's job failed (Flink, Spark): its cause, not a Python stack
        if " failed in state " not in str(err):
            raise
        cause = str(err).split(" failed in state ", 1)[1].splitlines()[0]
        print(
            f"dptext run: the job failed on its runner ({cause}); no partial outputs left under {_output_prefix(argv)}",
            file=sys.stderr,
        )
        return 1
    from dptext.pipeline.report import format_counters, job_counters

    counters = job_counters(result)
    print("dptext counters (also in the privacy report):\n" + format_counters(counters))
    engine = _engine_that_ran(_output_prefix(argv))
    if engine:
        print(f"dptext run: ran on {engine}")
    if counters.get("damaged_files"):
        print(
            f"dptext run: warning: {counters['damaged_files']} input file(s) are truncated or corrupt; the dead "
            "letter names each one and the offset from which its records were lost",
            file=sys.stderr,
        )
    return 0


def _engine_that_ran(prefix: str | None) -> str | None:
    """Flink or Spark, with version, master and SDK workers, as the job's report names it."""
    import json

    from apache_beam.io.filesystems import FileSystems

    from dptext.pipeline.report import report_paths

    with FileSystems.open(report_paths(prefix)[0]) as handle:
        return json.loads(handle.read().decode("utf-8")).get("engine")


def _output_prefix(argv: list[str]) -> str | None:
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--output")
    return parser.parse_known_args(argv)[0].output


class _Stop(BaseException):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
CANCEL_GRACE_SECONDS = 30  # a job on a remote runner is cancelled by the job process before it ends


def _supervise_run(argv: list[str]) -> int:
    """`dptext run` from the command line: the job runs in a child process in its own process group
    (Beam's worker processes join it), so Ctrl-C or SIGTERM reaches only this process, which stops
    the whole group, removes the run's partial outputs and prints one line (exit 128 + signal)."""
    import subprocess
    import uuid

    from dptext.pipeline.outputs import RUN_TOKEN_ENV, cleanup_after_stop

    token = uuid.uuid4().hex
    env = {**os.environ, RUN_TOKEN_ENV: token}

    def stop(signum, frame):
        for s in STOP_SIGNALS:  # a second Ctrl-C must not interrupt the clean-up
            signal.signal(s, signal.SIG_IGN)
        raise _Stop(signum)

    previous = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    child = None
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "dptext.pipeline.cli", "run", *argv], env=env, start_new_session=True
        )
        code = child.wait()
        if code >= 0:
            return code
        signum, what = -code, f"the job process was killed by signal {-code}"
    except _Stop as stopped:
        signum, what = stopped.signum, "interrupted"
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    try:
        if child is not None:
            _stop_job(child)
        prefix = _output_prefix(argv)
        removed = bool(prefix) and cleanup_after_stop(prefix, token)
        if removed:
            print(f"dptext run: {what}; partial outputs under {prefix} removed", file=sys.stderr)
        else:
            print(f"dptext run: {what} before this run wrote anything under {prefix}", file=sys.stderr)
        return 128 + signum
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _stop_job(child) -> None:
    """Freeze the job's process group (so Beam's workers cannot print their broken-pipe
    tracebacks), let the job process alone handle SIGTERM (it cancels a job on a remote runner; on a
    local runner it just ends), then SIGKILL the whole group, Beam's worker processes included."""
    import subprocess

    def group(signum):
        try:
            os.killpg(child.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    group(signal.SIGSTOP)
    if child.poll() is None:
        child.terminate()
        child.send_signal(signal.SIGCONT)
        try:
            child.wait(CANCEL_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            pass
    group(signal.SIGKILL)
    child.wait()


def _build_index(argv: list[str]) -> int:
    from dptext.transforms.embedding_io import read_embedding
    from dptext.transforms.index import DEFAULT_ANNOY_TREES, DEFAULT_NEIGHBOURS, EmbeddingIndex, sha256_file

    parser = argparse.ArgumentParser(
        prog="dptext build-index",
        description=(
            "Read an embedding and write an index directory: vocabulary, vectors, exact K nearest "
            "neighbours, exact Dmin/Dmax, an Annoy forest and a manifest with sha256 per file."
        ),
    )
    parser.add_argument("--embedding", required=True, help="word2vec text/binary or GloVe text file (.gz ok)")
    parser.add_argument("--out", required=True, help="index directory to write")
    parser.add_argument("--format", default="auto", choices=("auto", "word2vec", "glove", "word2vec-binary"))
    parser.add_argument("--neighbours", type=int, default=DEFAULT_NEIGHBOURS, help="K (default 64)")
    parser.add_argument("--annoy-trees", type=int, default=DEFAULT_ANNOY_TREES)
    parser.add_argument(
        "--beam",
        action="store_true",
        help=(
            "run the exact all-pairs pass as a Beam job over row blocks; every other option is a Beam "
            "pipeline option (--runner, --direct_num_workers, --job_endpoint, ...)"
        ),
    )
    parser.add_argument(
        "--staging",
        help="with --beam: a directory all workers can reach (gs://... on a "
        "cluster; default a local temporary directory)",
    )
    parser.add_argument("--rows-per-block", type=int, help="with --beam: rows per work item")
    parser.add_argument(
        "--no-tables",
        action="store_true",
        help=(
            "do not store the mechanisms' derived tables for their default parameters (the KDE prior is "
            "O(n^2 d) on this machine, even with --beam); the launcher of a job then computes the ones it needs"
        ),
    )
    args, beam_args = parser.parse_known_args(argv)
    if beam_args and not args.beam:
        parser.error(f"unrecognized arguments: {' '.join(beam_args)}")
    out = os.path.abspath(args.out)
    while not os.path.lexists(out):
        out = os.path.dirname(out)
    if not os.path.isdir(out):
        where = "is an existing file" if out == os.path.abspath(args.out) else f"is under {out}, a file,"
        print(
            f"dptext build-index: error: --out {args.out} {where} not a directory; choose a new directory",
            file=sys.stderr,
        )
        return 2
    words, vectors, stats = read_embedding(args.embedding, fmt=args.format)
    source = {
        "file": args.embedding,
        "sha256": sha256_file(args.embedding),
        "format": stats.format,
        "duplicates_skipped": stats.duplicates_skipped,
    }
    tables = None
    if args.beam:
        from dptext.pipeline.build_index import beam_tables

        tables = beam_tables(vectors, args.neighbours, beam_args, args.staging, args.rows_per_block)
    index = EmbeddingIndex.build(
        words, vectors, args.out, neighbours=args.neighbours, annoy_trees=args.annoy_trees, source=source, tables=tables
    )
    if not args.no_tables:
        from dptext.pipeline.build_index import store_default_tables

        store_default_tables(index)
    m = index.manifest
    print(
        f"index {args.out}: n={m['n']} d={m['d']} K={m['neighbours']} Dmin={m['dmin']:.6g} "
        f"Dmax={m['dmax']:.6g} ({stats.duplicates_skipped} duplicate words skipped) "
        f"in {m['build_seconds']:.1f} s"
    )
    for entry in m.get("tables", {}).values():
        print(f"  table {entry['file']} ({entry['name']}) in {entry['build_seconds']:.1f} s")
    return 0


def _audit(argv: list[str]) -> int:
    from dptext.pipeline.audit import main

    return main(argv) or 0


def _stats(argv: list[str]) -> int:
    from dptext.pipeline.stats import stats_main

    return stats_main(argv)


def _calibrate(argv: list[str]) -> int:
    from dptext.pipeline.stats import calibrate_main

    return calibrate_main(argv)


def _demo(argv: list[str]) -> int:
    from dptext.pipeline.demo import main

    return main(argv) or 0


def _ledger(argv: list[str]) -> int:
    from dptext.pipeline.ledger import main

    return main(argv)


def _template_metadata(argv: list[str]) -> int:
    from dptext.pipeline.template_metadata import main

    return main(argv)


COMMANDS = {
    "run": _run,
    "build-index": _build_index,
    "audit": _audit,
    "stats": _stats,
    "calibrate": _calibrate,
    "demo": _demo,
    "template-metadata": _template_metadata,
    "ledger": _ledger,
}


def main(argv: list[str] | None = None) -> int:
    """The `dptext` command. From the command line (argv None), `dptext run` supervises its job in a
    child process (see _supervise_run); called with a list, every command runs in this process."""
    from_command_line = argv is None
    if from_command_line:
        _quiet_worker_processes()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--version"]:
        import apache_beam

        from dptext.pipeline import __version__

        print(f"dptext {__version__} (apache-beam {apache_beam.__version__})")
        return 0
    if not argv or argv[0] not in COMMANDS:
        print(USAGE, file=sys.stderr if argv else sys.stdout)
        return 2 if argv and argv[0] not in ("-h", "--help") else 0
    logging.basicConfig(level=logging.WARNING)
    if argv[0] == "run" and from_command_line and not _is_job_process() and not {"-h", "--help"} & set(argv):
        return _supervise_run(argv[1:])
    from dptext.transforms.errors import DptextError

    try:
        return COMMANDS[argv[0]](argv[1:])
    except DptextError as err:  # a user's mistake: one line; anything else is a bug and keeps its traceback
        print(f"dptext {argv[0]}: error: {one_line(str(err))}", file=sys.stderr)
        return 2


def one_line(message: str) -> str:
    """An error message on one line even when it quotes a path holding a line break."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


def _is_job_process() -> bool:
    from dptext.pipeline.outputs import RUN_TOKEN_ENV

    return bool(os.environ.get(RUN_TOKEN_ENV))


if __name__ == "__main__":
    sys.exit(main())
