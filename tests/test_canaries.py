"""Canary words planted in a corpus never reach a log line, a metric name, an error message, the
dead letter, stdout/stderr or the report: only the privatized documents may hold words."""

from __future__ import annotations

import json
import logging

import numpy as np

from dptext.pipeline.cli import main

IN_VOCAB = "zanzibarite"  # in the vocabulary: goes through the mechanism
OOV = "quokkaflux"  # out of the vocabulary: replaced by the placeholder
WORDS = "the cat sat on a mat dog ran to park hello world good bad day night".split() + [IN_VOCAB]


def test_canaries_stay_out_of_logs_metrics_errors_and_reports(tmp_path, caplog, capfd):
    vectors = np.random.default_rng(3).normal(size=(len(WORDS), 5))
    (tmp_path / "e.txt").write_text(
        "".join(w + " " + " ".join(f"{x:.5f}" for x in v) + "\n" for w, v in zip(WORDS, vectors)), encoding="utf-8"
    )
    assert (
        main(
            ["build-index", "--embedding", str(tmp_path / "e.txt"), "--out", str(tmp_path / "idx"), "--neighbours", "5"]
        )
        == 0
    )
    lines = [json.dumps({"id": i, "text": f"the {IN_VOCAB} cat and {OOV} sat"}) for i in range(50)]
    lines += [
        f'{{"id": 99, "text": "broken {IN_VOCAB} {OOV}',
        json.dumps({"id": 98, "body": f"{OOV} {IN_VOCAB}"}),
        json.dumps({"id": 97, "text": f"{IN_VOCAB} " * 40}),
    ]  # bad JSON, no text field, too long
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    capfd.readouterr()
    with caplog.at_level(logging.DEBUG):
        assert (
            main(
                [
                    "run",
                    "--input",
                    str(tmp_path / "c.jsonl"),
                    "--output",
                    str(tmp_path / "o" / "x"),
                    "--index",
                    str(tmp_path / "idx"),
                    "--mechanism",
                    "tem",
                    "--epsilon",
                    "0.5",
                    "--max-doc-chars",
                    "200",
                    "--long-docs",
                    "dead-letter",
                    "--runner",
                    "DirectRunner",
                ]
            )
            == 0
        )
    captured = capfd.readouterr()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert caplog.records, "the run logged nothing at DEBUG: the log check would be vacuous"
    places = {"log records": logged, "stdout": captured.out, "stderr": captured.err}
    for path in (tmp_path / "o").iterdir():
        if "dead_letter" in path.name or "privacy_report" in path.name:
            places[path.name] = path.read_text(encoding="utf-8")
    assert any("dead_letter" in name for name in places) and any("report" in name for name in places)
    report = json.loads((tmp_path / "o" / "x.privacy_report.json").read_text())
    places["metric names"] = " ".join(report["metrics"])
    assert report["counts"]["documents"] == 50 and report["metrics"]["dead_lettered"] == 3
    for where, text in places.items():
        for canary in (IN_VOCAB, OOV):
            assert canary not in text, f"{canary!r} leaked into {where}"
