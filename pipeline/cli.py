"""`dptext` command line: run, build-index, audit, demo."""
from __future__ import annotations

import argparse
import logging
import sys

USAGE = """dptext COMMAND [options]

commands:
  run           privatize a corpus with a Beam pipeline (every Beam pipeline option passes through)
  build-index   build an index directory from an embedding file (word2vec text/binary, GloVe)
  audit         exact audit of truncated_gumbel on small vocabularies drawn from an index
  stats         N_w and S_w of a mechanism over a grid of epsilon (CSV, JSON, PNG); reads only the index
  calibrate     the epsilon whose median N_w reaches a target (compare mechanisms at matched deniability)
  demo          default embedding + public tweet sample, end to end
  template-metadata   write templates/metadata.json from the run options (--check: fail on drift)

`dptext COMMAND --help` for each command's options."""


def _run(argv: list[str]) -> int:
    from pipeline.options import DPTextOptions, OptionsError

    if "--help" in argv or "-h" in argv:
        parser = argparse.ArgumentParser(prog="dptext run", description=(
            "Privatize a corpus. Every Apache Beam pipeline option (--runner, --direct_num_workers, "
            "--temp_location, ...) is accepted as well."))
        DPTextOptions._add_argparse_args(parser)
        parser.print_help()
        return 0
    from pipeline.run import run
    from transforms.index import IndexLoadError

    try:
        result = run(argv)
    except (OptionsError, ValueError, FileNotFoundError, IndexLoadError) as err:
        print(f"dptext run: error: {err}", file=sys.stderr)
        return 2
    from pipeline.report import format_counters, job_counters

    print("dptext counters (also in the privacy report):\n" + format_counters(job_counters(result)))
    return 0


def _build_index(argv: list[str]) -> int:
    from transforms.embedding_io import EmbeddingFormatError, read_embedding
    from transforms.index import DEFAULT_ANNOY_TREES, DEFAULT_NEIGHBOURS, EmbeddingIndex, sha256_file

    parser = argparse.ArgumentParser(prog="dptext build-index", description=(
        "Read an embedding and write an index directory: vocabulary, vectors, exact K nearest "
        "neighbours, exact Dmin/Dmax, an Annoy forest and a manifest with sha256 per file."))
    parser.add_argument("--embedding", required=True, help="word2vec text/binary or GloVe text file (.gz ok)")
    parser.add_argument("--out", required=True, help="index directory to write")
    parser.add_argument("--format", default="auto", choices=("auto", "word2vec", "glove", "word2vec-binary"))
    parser.add_argument("--neighbours", type=int, default=DEFAULT_NEIGHBOURS, help="K (default 64)")
    parser.add_argument("--annoy-trees", type=int, default=DEFAULT_ANNOY_TREES)
    parser.add_argument("--beam", action="store_true", help=(
        "run the exact all-pairs pass as a Beam job over row blocks; every other option is a Beam "
        "pipeline option (--runner, --direct_num_workers, --job_endpoint, ...)"))
    parser.add_argument("--staging", help="with --beam: a directory all workers can reach (gs://... on a "
                                          "cluster; default a local temporary directory)")
    parser.add_argument("--rows-per-block", type=int, help="with --beam: rows per work item")
    args, beam_args = parser.parse_known_args(argv)
    if beam_args and not args.beam:
        parser.error(f"unrecognized arguments: {' '.join(beam_args)}")
    try:
        words, vectors, stats = read_embedding(args.embedding, fmt=args.format)
        source = {"file": args.embedding, "sha256": sha256_file(args.embedding), "format": stats.format,
                  "duplicates_skipped": stats.duplicates_skipped}
        tables = None
        if args.beam:
            from pipeline.build_index import beam_tables

            tables = beam_tables(vectors, args.neighbours, beam_args, args.staging, args.rows_per_block)
        index = EmbeddingIndex.build(words, vectors, args.out, neighbours=args.neighbours,
                                     annoy_trees=args.annoy_trees, source=source, tables=tables)
    except (EmbeddingFormatError, ValueError, FileNotFoundError) as err:
        print(f"dptext build-index: error: {err}", file=sys.stderr)
        return 2
    m = index.manifest
    print(f"index {args.out}: n={m['n']} d={m['d']} K={m['neighbours']} Dmin={m['dmin']:.6g} "
          f"Dmax={m['dmax']:.6g} ({stats.duplicates_skipped} duplicate words skipped) "
          f"in {m['build_seconds']:.1f} s")
    return 0


def _audit(argv: list[str]) -> int:
    from transforms.audit import main

    return main(argv) or 0


def _stats(argv: list[str]) -> int:
    from pipeline.stats import stats_main

    return stats_main(argv)


def _calibrate(argv: list[str]) -> int:
    from pipeline.stats import calibrate_main

    return calibrate_main(argv)


def _demo(argv: list[str]) -> int:
    from pipeline.demo import main

    return main(argv) or 0


def _template_metadata(argv: list[str]) -> int:
    from pipeline.template_metadata import main

    return main(argv)


COMMANDS = {"run": _run, "build-index": _build_index, "audit": _audit, "stats": _stats, "calibrate": _calibrate,
            "demo": _demo,
            "template-metadata": _template_metadata}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--version"]:
        from pipeline import __version__
        import apache_beam

        print(f"dptext {__version__} (apache-beam {apache_beam.__version__})")
        return 0
    if not argv or argv[0] not in COMMANDS:
        print(USAGE, file=sys.stderr if argv else sys.stdout)
        return 2 if argv and argv[0] not in ("-h", "--help") else 0
    logging.basicConfig(level=logging.WARNING)
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
