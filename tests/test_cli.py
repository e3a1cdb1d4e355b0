"""The `dptext` command line as a user meets it: build-index, run, audit, errors, --version."""

from __future__ import annotations

import json

import numpy as np

from dptext.pipeline.cli import main

WORDS = "the cat sat on a mat dog ran to park hello world good bad day night".split()


def _glove(path):
    vectors = np.random.default_rng(4).normal(size=(len(WORDS), 5))
    path.write_text(
        "".join(w + " " + " ".join(f"{x:.5f}" for x in v) + "\n" for w, v in zip(WORDS, vectors)), encoding="utf-8"
    )
    return path


def _build_index(tmp_path) -> None:
    """`dptext build-index` on a small GloVe file, into tmp_path / "idx" (K = 6)."""
    args = ["build-index", "--embedding", str(_glove(tmp_path / "e.txt")), "--out", str(tmp_path / "idx")]
    assert main([*args, "--neighbours", "6"]) == 0


def test_build_index_then_run_then_audit(tmp_path, capsys):
    _build_index(tmp_path)
    assert "n=16 d=5 K=6" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["source"]["format"] == "glove"
    (tmp_path / "c.txt").write_text("the cat sat\nhello world\n", encoding="utf-8")
    args = [
        "run",
        "--input",
        str(tmp_path / "c.txt"),
        "--output",
        str(tmp_path / "o" / "x"),
        "--index",
        str(tmp_path / "idx"),
        "--runner",
        "DirectRunner",
    ]
    assert main(args + ["--epsilon", "1"]) == 2
    err = capsys.readouterr().err
    assert "infeasible" in err and "smallest feasible epsilon is" in err
    assert main(args + ["--epsilon", "1000"]) == 0
    assert (tmp_path / "o" / "x.privacy_report.md").is_file()
    assert main(["audit", "--index", str(tmp_path / "idx"), "--epsilon", "1000", "--sizes", "9"]) == 0
    assert "worst ln-ratio" in capsys.readouterr().out


def test_errors_are_one_line_messages(tmp_path, capsys):
    assert main(["build-index", "--embedding", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "i")]) == 2
    assert "missing.txt" in capsys.readouterr().err
    (tmp_path / "bad.txt").write_text("a 1 2\nb 3\n", encoding="utf-8")
    assert main(["build-index", "--embedding", str(tmp_path / "bad.txt"), "--out", str(tmp_path / "i")]) == 2
    assert "line 2" in capsys.readouterr().err
    (tmp_path / "c.txt").write_text("x\n", encoding="utf-8")
    assert (
        main(
            [
                "run",
                "--input",
                str(tmp_path / "c.txt"),
                "--output",
                str(tmp_path / "o"),
                "--index",
                str(tmp_path / "none"),
                "--epsilon",
                "5",
            ]
        )
        == 2
    )
    assert "index directory not found" in capsys.readouterr().err


def test_version_help_and_usage(capsys):
    assert main(["--version"]) == 0 and capsys.readouterr().out.startswith("dptext 0.")
    assert main(["run", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--epsilon" in out and "--oov" in out and "--test-seed" in out
    assert main(["nope"]) == 2


def test_a_mechanism_parameter_of_another_mechanism_is_an_error_not_ignored(tmp_path, capsys):
    (tmp_path / "c.txt").write_text("x\n", encoding="utf-8")
    assert (
        main(
            [
                "run",
                "--input",
                str(tmp_path / "c.txt"),
                "--output",
                str(tmp_path / "o"),
                "--index",
                str(tmp_path / "none"),
                "--epsilon",
                "50",
                "--mechanism",
                "truncated_gumbel",
                "--search",
                "exact",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "--search is a parameter of" in err and "multivariate_laplace" in err
    assert "not of --mechanism truncated_gumbel" in err


def test_every_registered_mechanism_runs_end_to_end_with_its_report(tmp_path, capsys):
    """`dptext run --mechanism NAME` for every name in mechanisms.NAMES: one small corpus, one
    index, each report names the mechanism and carries its guarantee and exact counts."""
    from dptext.transforms import mechanisms

    _build_index(tmp_path)
    (tmp_path / "c.txt").write_text("the cat sat on a mat\nhello world, good day\n", encoding="utf-8")
    for name in mechanisms.NAMES:
        prefix = tmp_path / name / "out"
        assert (
            main(
                [
                    "run",
                    "--input",
                    str(tmp_path / "c.txt"),
                    "--output",
                    str(prefix),
                    "--index",
                    str(tmp_path / "idx"),
                    "--mechanism",
                    name,
                    "--epsilon",
                    "1000",
                    "--runner",
                    "DirectRunner",
                ]
            )
            == 0
        ), capsys.readouterr().err
        report = json.loads((tmp_path / name / "out.privacy_report.json").read_text())
        assert report["mechanism"] == name and report["guarantee"]["mechanism"] == name
        assert report["guarantee"]["statement"] and report["guarantee"]["not_protected"]
        assert report["counts"]["documents"] == 2 and report["counts"]["tokens"] == 10
        assert report["counts"]["perturbed"] + report["counts"]["oov"] == 10


def test_build_index_mistakes_are_one_line_errors_naming_the_path(tmp_path, capsys):
    """--out an existing file (or a path under one) and --embedding a directory were tracebacks."""
    embedding = _glove(tmp_path / "e.txt")
    (tmp_path / "afile").write_text("not a directory\n")
    for out, where in (
        (tmp_path / "afile", "is an existing file"),
        (tmp_path / "afile" / "idx", f"is under {tmp_path / 'afile'}, a file,"),
    ):
        capsys.readouterr()
        assert main(["build-index", "--embedding", str(embedding), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err == f"dptext build-index: error: --out {out} {where} not a directory; choose a new directory\n"
    assert (tmp_path / "afile").read_text() == "not a directory\n"
    (tmp_path / "adir").mkdir()
    assert main(["build-index", "--embedding", str(tmp_path / "adir"), "--out", str(tmp_path / "idx")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and f"{tmp_path / 'adir'}: this is a directory; expected an embedding file" in err
    assert not (tmp_path / "idx").exists()


def test_a_hand_edited_manifest_is_a_one_line_error_naming_manifest_and_field(tmp_path, capsys):
    _build_index(tmp_path)
    manifest = tmp_path / "idx" / "manifest.json"
    good = json.loads(manifest.read_text())
    (tmp_path / "c.txt").write_text("the cat\n", encoding="utf-8")
    manifest.write_text(json.dumps({**good, "dmin": 0}))
    capsys.readouterr()
    assert (
        main(
            [
                "run",
                "--input",
                str(tmp_path / "c.txt"),
                "--output",
                str(tmp_path / "o" / "x"),
                "--index",
                str(tmp_path / "idx"),
                "--epsilon",
                "1000",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert err.startswith(f"dptext run: error: {manifest}: field 'dmin' must be a finite number > 0")
