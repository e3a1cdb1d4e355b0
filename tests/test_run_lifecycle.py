"""A run owns its output prefix (issue 12 #1): a second run is refused or, with --overwrite, replaces
every output of the first before its job starts; a failed run leaves nothing; the prefix's outputs
are matched exactly (a neighbouring prefix or a user's file is never touched). Also the option
mistakes that used to be tracebacks or silently ignored (#10, #12)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from dptext.pipeline.cli import main
from dptext.pipeline.errors import OptionsError
from dptext.pipeline.outputs import existing_outputs, lock_path
from dptext.pipeline.run import run
from dptext.transforms.config import JobConfig, LoadedMechanism
from tests.conftest import build_random_index, shard_lines

TEMP = "beam-temp-c-0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    return build_random_index(tmp_path_factory.mktemp("index"), 60, 6, 6, seed=5).path


def _corpus(path: Path, lines: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path.write_text(
        "".join(" ".join(f"w{j}" for j in rng.integers(0, 70, 8)) + "\n" for _ in range(lines)), encoding="utf-8"
    )
    return path


def _args(index_dir, corpus, output, *extra):
    return [
        "--input",
        str(corpus),
        "--output",
        str(output),
        "--index",
        str(index_dir),
        "--epsilon",
        "200",
        "--test-seed",
        "1",
        "--runner",
        "DirectRunner",
        *extra,
    ]


def _outputs(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ---- 1. a run owns its prefix ---------------------------------------------------------------------
def test_a_second_run_to_the_same_prefix_is_refused_naming_a_file_and_the_way_out(index_dir, tmp_path):
    corpus = _corpus(tmp_path / "c.txt", 20)
    run(_args(index_dir, corpus, tmp_path / "o" / "c"))
    before = {p.name: p.read_bytes() for p in (tmp_path / "o").iterdir()}
    with pytest.raises(
        OptionsError,
        match=r"--output .*o/c: .*o/c-00000-of-00001\.txt and 3 more of its outputs "
        r"already exist; pass --overwrite to replace them, or choose another",
    ):
        run(_args(index_dir, corpus, tmp_path / "o" / "c"))
    assert {p.name: p.read_bytes() for p in (tmp_path / "o").iterdir()} == before  # untouched, no lock left


def test_two_worker_run_then_one_process_run_never_mix_their_shards(index_dir, tmp_path):
    """The issue's case: 2 worker processes write 2 shards, one process writes 1; the prefix must
    hold one run's records once, never both runs' (every record twice, two noise draws)."""
    for name, seed in (("a", 1), ("b", 2)):
        _corpus(tmp_path / f"{name}.txt", 150, seed)
    corpus = tmp_path / "*.txt"
    out = tmp_path / "o" / "c"
    run(_args(index_dir, corpus, out, "--direct_running_mode", "multi_processing", "--direct_num_workers", "2"))
    assert len(list((tmp_path / "o").glob("c-*-of-00002.txt"))) == 2  # the setting: 2 shards
    with pytest.raises(OptionsError, match="pass --overwrite"):
        run(_args(index_dir, corpus, out))
    run(_args(index_dir, corpus, out, "--overwrite"))
    assert _outputs(tmp_path / "o") == [
        "c-00000-of-00001.txt",
        "c.dead_letter-00000-of-00001.jsonl",
        "c.privacy_report.json",
        "c.privacy_report.md",
    ]
    assert len(shard_lines(str(out) + "-*.txt")) == 300
    assert json.loads((tmp_path / "o" / "c.privacy_report.json").read_text())["counts"]["documents"] == 300


def test_overwrite_removes_every_output_of_the_prefix_and_nothing_else(index_dir, tmp_path):
    corpus = _corpus(tmp_path / "c.txt", 10)
    o = tmp_path / "o"
    run(_args(index_dir, corpus, o / "c"))
    # A larger earlier run's shards, its dead letter and a temporary directory Beam left behind
    stale = [
        "c-00000-of-00003.txt",
        "c-00002-of-00003.jsonl",
        "c-00001-of-00003.parquet",
        "c.dead_letter-00001-of-00002.jsonl",
    ]
    for name in stale:
        (o / name).write_text("stale\n")
    (o / TEMP).mkdir()
    (o / TEMP / "x.c.txt").write_text("stale\n")
    (o / "beam-temp-c.dead_letter-0123456789abcdef0123456789abcdef").mkdir()
    # Not this prefix's: a neighbouring prefix, a user's files, another prefix's temporary directory
    others = [
        "c2-00000-of-00001.txt",
        "c-notes.txt",
        "c.txt",
        "c-00000-of-00001.txt.bak",
        "cc.privacy_report.json",
        "c.privacy_report.json.old",
        "c-00000-of-00001.csv",
        "c.dead_letter-notes.jsonl",
    ]
    for name in others:
        (o / name).write_text("keep\n")
    (o / "beam-temp-c2-0123456789abcdef0123456789abcdef").mkdir()
    (o / "beam-temp-c-2-0123456789abcdef0123456789abcdef").mkdir()
    assert {Path(p).name for p in existing_outputs(str(o / "c"))} == {
        "c-00000-of-00001.txt",
        "c.dead_letter-00000-of-00001.jsonl",
        "c.privacy_report.json",
        "c.privacy_report.md",
        *stale,
        TEMP,
        "beam-temp-c.dead_letter-0123456789abcdef0123456789abcdef",
    }
    run(_args(index_dir, corpus, o / "c", "--overwrite"))
    assert _outputs(o) == sorted(
        [
            "c-00000-of-00001.txt",
            "c.dead_letter-00000-of-00001.jsonl",
            "c.privacy_report.json",
            "c.privacy_report.md",
            *others,
            "beam-temp-c2-0123456789abcdef0123456789abcdef",
            "beam-temp-c-2-0123456789abcdef0123456789abcdef",
        ]
    )
    assert all((o / name).read_text() == "keep\n" for name in others)
    assert len(shard_lines(str(o / "c") + "-*-of-*.txt")) == 10


def test_a_neighbouring_prefix_does_not_block_a_run(index_dir, tmp_path):
    corpus = _corpus(tmp_path / "c.txt", 5)
    run(_args(index_dir, corpus, tmp_path / "o" / "c2"))
    (tmp_path / "o" / "c-notes.txt").write_text("mine\n")
    run(_args(index_dir, corpus, tmp_path / "o" / "c"))  # neither c2-* nor c-notes.txt is c's
    assert len(shard_lines(str(tmp_path / "o" / "c") + "-*-of-*.txt")) == 5


def test_a_failed_overwrite_run_leaves_no_old_report_and_no_partial_output(index_dir, tmp_path):
    """--overwrite deletes the old outputs before the job starts; the job then fails: the prefix is
    empty, so no report of the earlier run can pass for this one's."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from dptext.pipeline.options import DPTextOptions
    from dptext.pipeline.run import execute, prepare
    from tests.faults import FlakyConfig

    corpus = _corpus(tmp_path / "c.txt", 30)
    o = tmp_path / "o"
    run(_args(index_dir, corpus, o / "c"))
    options = PipelineOptions(_args(index_dir, corpus, o / "c", "--overwrite"))
    job = prepare(options.view_as(DPTextOptions))
    flaky = FlakyConfig(
        **{f: getattr(job.config, f) for f in job.config.__dataclass_fields__},
        flag_file=str(tmp_path / "fault"),
        trigger_id=0,
        error="RuntimeError",
    )
    with pytest.raises(Exception, match="injected fault"):
        execute(options, job.with_config(flaky))
    assert (tmp_path / "fault").exists()
    assert _outputs(o) == []


@dataclass(frozen=True)
class _CtrlCConfig(JobConfig):
    """The mechanism raises KeyboardInterrupt mid-job, as Ctrl-C does in a Python session."""

    def load(self) -> LoadedMechanism:
        return LoadedMechanism(super().load().index, _CtrlC())


class _CtrlC:
    name, epsilon = "ctrl-c", 1.0

    def perturb(self, ids, rng):
        raise KeyboardInterrupt


def test_ctrl_c_in_a_python_session_removes_the_partial_outputs(index_dir, tmp_path, monkeypatch, capsys):
    """`run()` and `main([...])` run the job in the calling process. Ctrl-C inside a DoFn reaches
    the caller as Beam's RuntimeError("KeyboardInterrupt [while running ...]"), elsewhere as
    KeyboardInterrupt: either way no output is left, and the in-process CLI says so in one line."""
    import dptext.pipeline.run as run_module

    real_prepare = run_module.prepare

    def prepare(opts, engine=None):
        job = real_prepare(opts, engine)
        config = _CtrlCConfig(**{f: getattr(job.config, f) for f in job.config.__dataclass_fields__})
        return job.with_config(config)

    monkeypatch.setattr(run_module, "prepare", prepare)
    corpus = _corpus(tmp_path / "c.txt", 30)
    with pytest.raises(RuntimeError, match="KeyboardInterrupt"):
        run(_args(index_dir, corpus, tmp_path / "o" / "c"))
    assert _outputs(tmp_path / "o") == []

    def interrupted(opts, engine=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "prepare", interrupted)
    capsys.readouterr()
    assert main(["run", *_args(index_dir, corpus, tmp_path / "o" / "c")]) == 130
    captured = capsys.readouterr()
    assert captured.err == f"dptext run: interrupted; no partial outputs left under {tmp_path / 'o' / 'c'}\n"
    assert _outputs(tmp_path / "o") == []


def test_the_lock_is_released_after_a_run_and_a_stale_lock_file_does_not_block(index_dir, tmp_path):
    corpus = _corpus(tmp_path / "c.txt", 5)
    lock = Path(lock_path(str(tmp_path / "o" / "c")))
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text("a run killed with SIGKILL left this")
    run(_args(index_dir, corpus, tmp_path / "o" / "c"))
    assert not lock.exists()
    assert lock_path(str(tmp_path / "o" / "c")) == lock_path(os.path.relpath(tmp_path / "o" / "c"))


def test_an_input_glob_over_the_output_directory_reads_only_the_inputs(index_dir, tmp_path):
    """Nothing of the run (a lock file, say) may appear in the output directory before the job reads
    its input: `--input 'o/*' --output o/c` reads exactly the 40 input documents."""
    (tmp_path / "o").mkdir()
    _corpus(tmp_path / "o" / "in.txt", 40)
    run(_args(index_dir, tmp_path / "o" / "*", tmp_path / "o" / "c"))
    assert len(shard_lines(str(tmp_path / "o" / "c") + "-*-of-*.txt")) == 40
    assert json.loads((tmp_path / "o" / "c.privacy_report.json").read_text())["counts"]["documents"] == 40


def test_a_run_holding_the_prefix_excludes_a_concurrent_one(index_dir, tmp_path):
    from dptext.pipeline.outputs import claim

    corpus = _corpus(tmp_path / "c.txt", 5)
    held = claim(str(tmp_path / "o" / "c"), overwrite=False)
    try:
        with pytest.raises(
            OptionsError,
            match=r"another dptext run is writing to this prefix \(it holds the lock "
            r".*/locks/[0-9a-f]{32}\.lock\); wait for it to finish",
        ):
            run(_args(index_dir, corpus, tmp_path / "o" / "c"))
    finally:
        held.release()
    run(_args(index_dir, corpus, tmp_path / "o" / "c"))


# ---- 10. plain mistakes are one-line errors, exit 2, naming the thing ------------------------------
def _cli_error(capsys, argv) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1, captured.err
    return captured.err


@pytest.mark.parametrize(
    "output, message",
    [
        ("{tmp}/afile/c", r"--output {tmp}/afile/c: {tmp}/afile is a file, not a directory"),
        ("{tmp}/afile/deeper/c", r"--output {tmp}/afile/deeper/c: {tmp}/afile is a file, not a directory"),
        (
            "{tmp}/adir",
            r"--output {tmp}/adir is a directory; the output is a file prefix inside it, "
            r"e.g. --output {tmp}/adir/corpus",
        ),
        ("{tmp}/adir/", r"--output {tmp}/adir/ names a directory or bucket, not a file prefix"),
        ("", r"--output must not be empty"),
        ("{tmp}/o/*", r"'\*', '\?' and '\[' are not allowed in the output prefix"),
        ("{tmp}/o/c[1]", r"are not allowed in the output prefix"),
        ("gs://bucket", r"--output gs://bucket names a directory or bucket"),
    ],
)
def test_an_output_that_cannot_be_written_fails_before_the_job(index_dir, tmp_path, capsys, output, message):
    corpus = _corpus(tmp_path / "c.txt", 3)
    (tmp_path / "afile").write_text("a regular file\n")
    (tmp_path / "adir").mkdir()
    output = output.format(tmp=tmp_path)
    err = _cli_error(capsys, ["run", *_args(index_dir, corpus, output)])
    assert err.startswith("dptext run: error: ")
    assert __import__("re").search(message.format(tmp=tmp_path), err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile", "c.txt"]  # nothing written
    assert list((tmp_path / "adir").iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_an_output_in_a_read_only_directory_fails_before_the_job(index_dir, tmp_path, capsys):
    corpus = _corpus(tmp_path / "c.txt", 3)
    (tmp_path / "ro").mkdir(mode=0o555)
    err = _cli_error(capsys, ["run", *_args(index_dir, corpus, tmp_path / "ro" / "sub" / "c")])
    assert f"cannot write in {tmp_path / 'ro'} (permission denied)" in err


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_an_output_even_root_cannot_write_fails_before_the_job(index_dir, tmp_path, capsys):
    """The check creates what Beam creates first (its temporary directory) rather than trusting
    os.access, which says yes to root: /proc takes no new directory, even from root."""
    corpus = _corpus(tmp_path / "c.txt", 3)
    err = _cli_error(capsys, ["run", *_args(index_dir, corpus, "/proc/c")])
    assert err.startswith("dptext run: error: --output /proc/c: cannot write in /proc ")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--mechansim", "tem"], "unknown option --mechansim (did you mean --mechanism?)"),
        (["--epsilom=5"], "unknown option --epsilom (did you mean --epsilon?)"),
        (["--overwrite-outputs"], "unknown option --overwrite-outputs (did you mean --overwrite?)"),
        (["--no-such-knob", "1"], "unknown option --no-such-knob; `dptext run --help` lists dptext's options"),
        (["stray"], "unexpected argument 'stray'"),
    ],
)
def test_an_option_nobody_knows_is_refused_not_dropped(index_dir, tmp_path, capsys, extra, message):
    corpus = _corpus(tmp_path / "c.txt", 3)
    err = _cli_error(capsys, ["run", *_args(index_dir, corpus, tmp_path / "o" / "c"), *extra])
    assert message in err
    assert not (tmp_path / "o").exists()


def test_beam_options_and_both_spellings_of_dptext_options_still_pass(index_dir, tmp_path):
    corpus = _corpus(tmp_path / "c.txt", 3)
    run(
        _args(
            index_dir,
            corpus,
            tmp_path / "o" / "c",
            "--oov_placeholder",
            "<x>",
            "--max-doc-chars=500",
            "--direct_num_workers",
            "1",
            "--experiments",
            "a",
            "--overwrite=false",
        )
    )
    assert len(shard_lines(str(tmp_path / "o" / "c") + "-*.txt")) == 3


# ---- 12. a placeholder with a line break would split a text document in two -----------------------
@pytest.mark.parametrize("placeholder", ["<u\nk>", "\r", "a\u2028b", "x\x85", "\u2029", "\x0b", "\x0c"])
def test_a_placeholder_with_a_line_break_is_refused(index_dir, tmp_path, capsys, placeholder):
    corpus = _corpus(tmp_path / "c.txt", 3)
    err = _cli_error(capsys, ["run", *_args(index_dir, corpus, tmp_path / "o" / "c"), "--oov-placeholder", placeholder])
    assert "--oov-placeholder" in err and "contains a line break" in err
    assert not (tmp_path / "o").exists()


def test_portable_runners_pass_their_job_servers_options_through_but_not_near_misses():
    """Flink and Spark job servers take options Python Beam does not define (they are forwarded),
    so there only a near miss of a known option is refused; elsewhere every unknown one is."""
    from dptext.pipeline.options import check_unknown_options

    check_unknown_options(["--checkpointing_interval", "5000", "--externalized_checkpoints_enabled"], "FlinkRunner")
    with pytest.raises(OptionsError, match=r"unknown option --mechansim \(did you mean --mechanism\?\)"):
        check_unknown_options(["--mechansim", "tem"], "FlinkRunner")
    with pytest.raises(OptionsError, match="unknown option --checkpointing_interval"):
        check_unknown_options(["--checkpointing_interval", "5000"], "DirectRunner")
    check_unknown_options(["--runner", "DirectRunner", "--", "--anything"], None)  # argparse's end of options
