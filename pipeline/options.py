"""DPTextOptions: every dptext pipeline parameter, and the one function that validates them.

The CLI, `dptext run --help` and (later) the Flex Template metadata all come from this class.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from dptext.pipeline.errors import OptionsError
from dptext.transforms.config import CASE_POLICIES, LONG_DOCUMENT_POLICIES, OOV_POLICIES, InvalidParameter, JobConfig

FORMATS = ("auto", "text", "jsonl", "parquet")
REBALANCE_CHOICES = ("auto", "true", "false")
# Runners that execute from the launching process. Their shuffle is an in-memory buffer there (a
# rebalanced 3.3M-token job peaked at 524 MB instead of 215 MB), and they deal dptext's equal
# initial splits out evenly to their worker processes anyway (2 workers: 18.9 s without, 21.3 s with).
LOCAL_RUNNERS = ("DirectRunner", "SwitchingDirectRunner", "FnApiRunner", "BundleBasedDirectRunner")


class DPTextOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        add = parser.add_argument
        add(
            "--input",
            help="Input file, directory glob or pattern (e.g. corpus/*.jsonl). One document "
            "per line (text) or one JSON object per line (jsonl).",
        )
        add(
            "--output",
            help="Output prefix: shards PREFIX-SSSSS-of-NNNNN.EXT, PREFIX.dead_letter-*.jsonl, "
            "PREFIX.privacy_report.json and .md.",
        )
        add("--index", help="Index directory built by `dptext build-index`.")
        add("--mechanism", default="truncated_gumbel", help="Mechanism name (default truncated_gumbel).")
        add("--epsilon", type=float, help="Privacy parameter of the mechanism (> 0).")
        add(
            "--format",
            dest="input_format",
            default="auto",
            choices=FORMATS,
            help="Input format; auto: .jsonl/.json/.ndjson is jsonl, .parquet is parquet, anything else text.",
        )
        add(
            "--text-field",
            "--text_field",
            dest="text_field",
            default="text",
            help="JSONL field or Parquet column holding the text (default text); every other field or "
            "column is carried through unchanged.",
        )
        add(
            "--oov",
            default="placeholder",
            choices=OOV_POLICIES,
            help="Out-of-vocabulary tokens: placeholder (default), random vocabulary word, or keep "
            "(no protection for those tokens; the report says so).",
        )
        add(
            "--oov-placeholder",
            "--oov_placeholder",
            dest="oov_placeholder",
            default="<unk>",
            help="The placeholder token for --oov placeholder.",
        )
        add(
            "--case",
            default="keep",
            choices=CASE_POLICIES,
            help="Case of output words: keep (default: a word found only lower-cased gets the input's "
            "Title or UPPER pattern back; the case pattern is then not protected, the report says so) "
            "or lower (every output word lower-cased: no case channel).",
        )
        add(
            "--max-doc-chars",
            "--max_doc_chars",
            dest="max_doc_chars",
            type=int,
            default=1_000_000,
            help="Documents longer than this (default 1,000,000 characters) are handled by --long-docs.",
        )
        add(
            "--long-docs",
            "--long_docs",
            dest="long_docs",
            default="split",
            choices=LONG_DOCUMENT_POLICIES,
            help="Longer documents: split (processed in chunks cut between words, then rejoined; memory "
            "bounded by --max-doc-chars) or dead-letter (sent to the dead letter with the reason).",
        )
        add(
            "--batch-chars",
            "--batch_chars",
            dest="batch_chars",
            type=int,
            default=65536,
            help="Characters of text per perturbation batch (many documents per mechanism call).",
        )
        add(
            "--rebalance",
            default="auto",
            choices=REBALANCE_CHOICES,
            help="Shuffle the batches between reading and perturbing, so every worker gets an even share "
            "even when the input comes in few splits (e.g. one gzip file). auto (default): on, except "
            "on the DirectRunner, whose shuffle would hold the corpus in memory and which spreads the "
            "equal initial splits of the input evenly anyway; true; false: perturb where read (saves "
            "a shuffle of the corpus where the runner balances the reads, e.g. Dataflow's dynamic "
            "splitting of large shards).",
        )
        add(
            "--delta",
            type=float,
            default=1e-6,
            help="delta for the composed per-document bound in the report (default 1e-6).",
        )
        # Privacy units (pipeline/units.py, pipeline/ledger.py).
        add(
            "--privacy-unit",
            "--privacy_unit",
            dest="privacy_unit",
            default=None,
            help="JSONL field or Parquet column naming the person (e.g. a user id): the report adds a per-unit "
            "section (word tokens released per unit and the composed bound). A record without it goes to the "
            "dead letter; refused for text input.",
        )
        add(
            "--max-tokens-per-unit",
            "--max_tokens_per_unit",
            dest="max_tokens_per_unit",
            type=int,
            default=None,
            help="With --privacy-unit: release at most this many word tokens per unit (a uniformly random order "
            "of its documents, admitted while they fit; the others go to PREFIX.withheld-*.jsonl, without "
            "text); the report then states a bound that holds for every unit.",
        )
        add(
            "--budget-ledger",
            "--budget_ledger",
            dest="budget_ledger",
            default=None,
            help="With --privacy-unit and --unit-budget: ledger directory (local or gs://) of what each unit "
            "spent across runs, as HMAC-SHA256 hashes under the key in DPTEXT_LEDGER_KEY; units past the "
            "budget are withheld, and a new ledger version is committed atomically when the run succeeds.",
        )
        add(
            "--unit-budget",
            "--unit_budget",
            dest="unit_budget",
            type=float,
            default=None,
            help="With --budget-ledger: the most epsilon (basic composition: released tokens x per-token pure "
            "epsilon, summed over runs) any unit may spend.",
        )
        add(
            "--ledger-key-secret",
            "--ledger_key_secret",
            dest="ledger_key_secret",
            default=None,
            help="With --budget-ledger, when DPTEXT_LEDGER_KEY is not set: the Secret Manager secret version that "
            "holds the key (projects/P/secrets/NAME/versions/latest), read with the launcher's credentials.",
        )
        add(
            "--overwrite",
            type=parse_bool,
            nargs="?",
            const=True,
            default=False,
            help="Replace the outputs of an earlier run under --output (deleted before the job starts). "
            "Without it, a prefix that already holds dptext outputs is refused.",
        )
        add(
            "--test-seed",
            "--test_seed",
            dest="test_seed",
            type=int,
            default=None,
            help="TESTS ONLY: fixed seed; outputs are reproducible and not private; the report says so.",
        )
        for spec in mechanism_parameter_specs().values():
            spellings = dict.fromkeys((f"--{spec.name.replace('_', '-')}", f"--{spec.name}"))
            add(*spellings, dest=spec.name, type=spec.parse, choices=spec.choices, default=None, help=spec.help)


# Runners that would silently lose records of a multi-output, multi-sink job like dptext's.
REFUSED_RUNNERS = {
    "DaskRunner": (
        "Beam 2.77's DaskRunner sends every tagged output of a ParDo into one PCollection "
        "and computes only the last sink of a pipeline (its run_pipeline computes "
        "list(bags.values())[-1]), so a dptext job on it would silently lose its documents or "
        "its dead letter; the DaskRunner of Beam 2.62, which dptext pins for Flink and Spark, "
        "has not been shown to keep every output of this job's shape. Use DirectRunner "
        "(--direct_running_mode multi_processing), "
        "PortableRunner, FlinkRunner, SparkRunner or DataflowRunner."
    ),
}


def rebalance(options: PipelineOptions) -> bool:
    """Whether the job shuffles its batches before perturbing them (--rebalance)."""
    setting = options.view_as(DPTextOptions).rebalance
    if setting != "auto":
        return setting == "true"
    return default_rebalance(options.view_as(StandardOptions).runner)


def runner_name(runner) -> str:
    """--runner as given (a name or a runner object); None is dptext's default, the DirectRunner."""
    if runner is None:
        return "DirectRunner"
    return runner if isinstance(runner, str) else type(runner).__name__


def _short_runner_name(runner) -> str:
    """ "apache_beam.runners.dask.dask_runner.DaskRunner" -> "DaskRunner"."""
    return runner_name(runner).rsplit(".", 1)[-1]


def default_rebalance(runner) -> bool:
    """--rebalance auto: on, except on the runners that execute in the launching process."""
    return _short_runner_name(runner) not in LOCAL_RUNNERS


def check_runner(runner) -> None:
    """Refuse runners known to lose data for this job's shape."""
    short = _short_runner_name(runner)
    if short in REFUSED_RUNNERS:
        raise OptionsError(f"--runner {runner_name(runner)}: refused. {REFUSED_RUNNERS[short]}")


# Runners whose job server takes pipeline options Python Beam does not define (passed through).
PORTABLE_RUNNERS = ("PortableRunner", "FlinkRunner", "SparkRunner", "PrismRunner")


def check_unknown_options(argv: list[str], runner=None) -> None:
    """Refuse an option neither dptext nor Beam defines (Beam only warns and drops it, so a
    misspelled --mechanism would silently run the default). On portable runners, whose job
    servers accept options of their own, only a near miss of a known option is refused."""
    from apache_beam.options.pipeline_options import _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False)
    for cls in {str(c): c for c in PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(parser)
    known = sorted({o for action in parser._actions for o in action.option_strings if o.startswith("--")})
    _, unknown = parser.parse_known_args(list(argv))
    portable = _short_runner_name(runner) in PORTABLE_RUNNERS
    for arg in unknown:
        if arg == "--":
            break
        if not arg.startswith("-"):
            if not portable:
                raise OptionsError(
                    f"unexpected argument {arg!r}: every dptext option is --name value (`dptext run --help`)"
                )
            continue
        option = arg.split("=", 1)[0]
        close = difflib.get_close_matches(option, known, n=1)
        if portable and not difflib.get_close_matches(option, known, n=1, cutoff=0.8):
            continue
        hint = f" (did you mean {close[0]}?)" if close else "; `dptext run --help` lists dptext's options"
        raise OptionsError(f"unknown option {option}{hint}")


@dataclass(frozen=True)
class MechanismParameterSpec:
    """One `dptext run` option for a mechanism parameter, shared by the mechanisms that take it."""

    name: str
    parse: Callable[[str], object]
    help: str
    mechanisms: tuple[str, ...]
    choices: tuple | None = None


def parse_bool(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(f"expected true or false, got {text!r}")
    return lowered in ("true", "1", "yes")


def mechanism_parameter_specs() -> dict[str, MechanismParameterSpec]:
    """Every parameter of every registered mechanism, from its Params dataclass (default, help, choices),
    typed from its default: the single source of the run options and the template metadata."""
    from dptext.transforms.mechanisms import REGISTRY

    found: dict[str, dict] = {}
    for mech_name in sorted(REGISTRY):
        for param in REGISTRY[mech_name].parameters():
            default = param.default
            parse = parse_bool if isinstance(default, bool) else type(default) if default is not None else str
            entry = found.setdefault(param.name, {"parse": parse, "helps": {}, "mechanisms": [], "choices": set()})
            entry["choices"].update(param.choices or ())
            entry["mechanisms"].append(mech_name)
            entry["helps"][mech_name] = f"{param.help} (default {default})"
    specs = {}
    for name, entry in found.items():
        helps = entry["helps"]
        if len(set(helps.values())) == 1:
            text = f"{', '.join(entry['mechanisms'])}: {next(iter(helps.values()))}"
        else:
            text = "; ".join(f"{m}: {h}" for m, h in helps.items())
        specs[name] = MechanismParameterSpec(
            name, entry["parse"], text, tuple(entry["mechanisms"]), tuple(sorted(entry["choices"])) or None
        )
    return specs


def mechanism_params(opts: DPTextOptions) -> dict:
    """The mechanism parameters given on the command line, for the chosen mechanism; a parameter
    that the chosen mechanism does not take is an error rather than silently ignored."""
    params = {}
    for name, spec in mechanism_parameter_specs().items():
        value = getattr(opts, name, None)
        if value is None:
            continue
        if opts.mechanism not in spec.mechanisms:
            raise OptionsError(
                f"--{name.replace('_', '-')} is a parameter of {', '.join(spec.mechanisms)}, "
                f"not of --mechanism {opts.mechanism}"
            )
        params[name] = value
    return params


def validate(opts: DPTextOptions) -> JobConfig:
    """Validate every dptext option at the door and return the job's configuration. The ranges
    are JobConfig's (one check for the CLI and dptext.Privatize); errors name the option."""
    from dptext.transforms import mechanisms

    for name in ("input", "output", "index", "epsilon"):
        if getattr(opts, name) is None:
            raise OptionsError(f"--{name} is required")
    if opts.mechanism not in mechanisms.NAMES:
        raise OptionsError(f"--mechanism {opts.mechanism!r} is unknown; valid: {', '.join(mechanisms.NAMES)}")
    if not opts.text_field:
        raise OptionsError("--text-field must not be empty")
    if (getattr(opts, "budget_ledger", None) is None) != (getattr(opts, "unit_budget", None) is None):
        raise OptionsError("--budget-ledger and --unit-budget go together: a ledger records spend against a budget")
    try:
        return JobConfig(
            index_path=str(opts.index),
            mechanism=opts.mechanism,
            epsilon=opts.epsilon,
            mechanism_params=mechanism_params(opts),
            text_field=opts.text_field,
            oov=opts.oov,
            placeholder=opts.oov_placeholder,
            case=opts.case,
            max_doc_chars=opts.max_doc_chars,
            long_docs=opts.long_docs,
            batch_chars=opts.batch_chars,
            delta=opts.delta,
            test_seed=opts.test_seed,
            privacy_unit=getattr(opts, "privacy_unit", None),
            max_tokens_per_unit=getattr(opts, "max_tokens_per_unit", None),
            unit_budget=getattr(opts, "unit_budget", None),
        )
    except InvalidParameter as err:
        raise option_error(err) from None


def option_error(err: InvalidParameter) -> OptionsError:
    """A JobConfig parameter error, naming the `dptext run` option instead of the argument."""
    return OptionsError(f"--{err.parameter.replace('_', '-')} {err.problem}")


def parse_pipeline_options(argv) -> PipelineOptions:
    """PipelineOptions(argv) whose every view reads the value the user wrote.

    Beam parses each `view_as(Cls)` with a parser that knows only Cls's options and accepts
    abbreviations, so `--output PATH` becomes PortableOptions' --output_executable_path, and
    Flink's job server then writes a pipeline jar to PATH instead of running the job. A view
    keeps any value already in the shared option dict, so that dict is filled first from one
    parse that knows every option (dptext's too) and matches only whole names."""
    options = PipelineOptions(argv)
    exact = PipelineOptions(argv).get_all_options(retain_unknown_options=False)
    for name, value in exact.items():
        options._all_options.setdefault(name, value)  # noqa: SLF001 -- Beam keeps views' values here
    return options
