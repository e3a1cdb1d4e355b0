"""The budget ledger: spend across runs, atomic versions, keyed hashes, refusals."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from dptext.pipeline import ledger as ledger_module
from dptext.pipeline.cli import main as cli_main
from dptext.pipeline.context import describe_job
from dptext.pipeline.errors import OptionsError
from dptext.pipeline.ledger import (
    KEY_ENV,
    LedgerConflict,
    LedgerRun,
    current_version,
    key_check,
    orphans,
    read_rows,
    unit_hash,
)
from dptext.pipeline.options import DPTextOptions
from dptext.pipeline.outputs import existing_outputs
from dptext.pipeline.run import execute, prepare, run
from dptext.transforms.config import JobConfig
from tests.conftest import build_words_index, shard_lines
from tests.gcs_emulator import gcs_emulator

WORDS = "the cat sat on a mat dog ran to park hello world good bad day night".split()
KEY = "a-test-ledger-key-of-32-characters"
CAP = 10
HEAVY = [f"heavy-person-{i}-x7q" for i in range(3)]
LIGHT = [f"light-person-{i}-m2w" for i in range(10)]


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    return build_words_index(tmp_path_factory.mktemp("ledger_index"), WORDS, d=5, neighbours=6, seed=3)


@pytest.fixture(scope="module")
def per_token(index_dir):
    config = JobConfig(index_path=str(index_dir), mechanism="multivariate_laplace", epsilon=5.0, text_field="text")
    return describe_job(config).guarantee.per_token_pure_epsilon


@pytest.fixture(autouse=True)
def ledger_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


def corpus(path: Path) -> list[dict]:
    """Heavy units: 40 one-token documents each (the cap admits exactly CAP of them); light units:
    two 2-token documents each (4 tokens a run, 12 in three runs)."""
    records = [{"user": u, "text": "cat"} for u in HEAVY for _ in range(40)]
    records += [{"user": u, "text": "good day"} for u in LIGHT for _ in range(2)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def _args(index_dir, inputs, output, ledger, budget, *extra):
    return [
        "--input", str(inputs), "--output", str(output), "--index", str(index_dir),
        "--mechanism", "multivariate_laplace", "--epsilon", "5", "--privacy-unit", "user",
        "--max-tokens-per-unit", str(CAP), "--budget-ledger", str(ledger), "--unit-budget", repr(budget), *extra,
    ]  # fmt: skip


def _spend(ledger) -> dict:
    return dict(read_rows(current_version(str(ledger))))


def _all_ledger_bytes(ledger: Path) -> str:
    return "".join(p.read_text("utf-8") for p in ledger.iterdir() if p.is_file())


def test_three_runs_where_the_budget_admits_two_runs_at_the_cap(index_dir, per_token, tmp_path, capsys):
    records = corpus(tmp_path / "in.jsonl")
    ledger = tmp_path / "ledger"
    budget = 2 * CAP * per_token
    key = KEY.encode()
    for number in (1, 2, 3):
        output = tmp_path / f"run{number}" / "corpus"
        run(_args(index_dir, tmp_path / "in.jsonl", output, ledger, budget))
        docs = [json.loads(line) for line in shard_lines(f"{output}-*.jsonl")]
        withheld = [json.loads(line) for line in shard_lines(f"{output}.withheld-*.jsonl")]
        assert len(docs) + len(withheld) == len(records)
        released = Counter(d["user"] for d in docs)  # one-token heavy documents: count = tokens
        if number < 3:
            assert all(released[u] == CAP for u in HEAVY)
        else:  # the third run withholds the heavy units entirely
            assert not any(released[u] for u in HEAVY)
            assert len(withheld) == 40 * len(HEAVY)
            assert all("its allowance" in w["reason"] for w in withheld)
        assert all(released[u] == 2 for u in LIGHT)
        spend = _spend(ledger)
        assert current_version(str(ledger)).version == number
        assert set(spend) == {unit_hash(key, u) for u in HEAVY + LIGHT}
        for u in HEAVY:
            assert spend[unit_hash(key, u)] == pytest.approx(min(number, 2) * CAP * per_token, rel=1e-12)
        for u in LIGHT:
            assert spend[unit_hash(key, u)] == pytest.approx(number * 4 * per_token, rel=1e-12)
        assert max(spend.values()) <= budget * (1 + 1e-9)
        report = json.loads(Path(f"{output}.privacy_report.json").read_text("utf-8"))
        section = report["per_unit"]["ledger"]
        assert section["version_read"] == number - 1 and section["version_written"] == number
        assert section["max_spent"] == pytest.approx(max(spend.values()))
        assert any(line.startswith("Budget ledger: this run released tokens only") for line in report["statement"])
    # The ledger holds keyed hashes only: no unit id, no text, anywhere in it.
    stored = _all_ledger_bytes(ledger)
    assert not any(u in stored for u in HEAVY + LIGHT) and "person" not in stored and "cat" not in stored
    assert cli_main(["ledger", "--ledger", str(ledger)]) == 0
    out = capsys.readouterr().out
    assert "version 3" in out and f"{len(HEAVY) + len(LIGHT)} units" in out
    assert f"exhausted: {len(HEAVY)} units" in out
    assert f"max {2 * CAP * per_token:.6g}" in out


def test_a_run_with_another_key_or_without_one_is_refused(index_dir, per_token, tmp_path, monkeypatch):
    corpus(tmp_path / "in.jsonl")
    ledger = tmp_path / "ledger"
    run(_args(index_dir, tmp_path / "in.jsonl", tmp_path / "a" / "c", ledger, 100 * per_token))
    monkeypatch.setenv(KEY_ENV, "another-key-entirely-0123456789")
    with pytest.raises(OptionsError, match="is not the key this ledger was written with"):
        run(_args(index_dir, tmp_path / "in.jsonl", tmp_path / "b" / "c", ledger, 100 * per_token))
    monkeypatch.setenv(KEY_ENV, "short")
    with pytest.raises(Exception, match="use at least 16"):
        run(_args(index_dir, tmp_path / "in.jsonl", tmp_path / "b" / "c", ledger, 100 * per_token))
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(Exception, match="needs the environment variable DPTEXT_LEDGER_KEY"):
        run(_args(index_dir, tmp_path / "in.jsonl", tmp_path / "b" / "c", ledger, 100 * per_token))
    assert current_version(str(ledger)).version == 1
    with pytest.raises(OptionsError, match="--budget-ledger and --unit-budget go together"):
        run(_args(index_dir, tmp_path / "in.jsonl", tmp_path / "b" / "c", ledger, 1.0)[:-2])


def test_a_budget_for_a_mechanism_without_a_per_token_bound_is_refused(index_dir, tmp_path):
    corpus(tmp_path / "in.jsonl")
    args = _args(index_dir, tmp_path / "in.jsonl", tmp_path / "a" / "c", tmp_path / "l", 10.0)
    args[args.index("multivariate_laplace")] = "truncated_gumbel"
    args[args.index("5")] = "1000"
    with pytest.raises(OptionsError, match="--unit-budget cannot be spent with --mechanism truncated_gumbel"):
        run(args)
    args = _args(index_dir, tmp_path / "in.jsonl", tmp_path / "a" / "c", tmp_path / "l", 1e-3)
    with pytest.raises(OptionsError, match="is below one token's pure epsilon"):
        run(args)


def test_an_interrupted_ledger_update_leaves_the_previous_version(index_dir, per_token, tmp_path, monkeypatch):
    corpus(tmp_path / "in.jsonl")
    ledger = tmp_path / "ledger"
    run(_args(index_dir, tmp_path / "in.jsonl", tmp_path / "a" / "c", ledger, 100 * per_token))
    before = (current_version(str(ledger)), _spend(ledger))

    def power_cut(path, data):  # the job dies after writing its rows, before the commit record
        assert list(ledger.glob("data-000002-*.jsonl"))  # this run's rows are complete on disk
        raise RuntimeError("power cut")

    monkeypatch.setattr(ledger_module, "_create_exclusive", power_cut)
    output = tmp_path / "b" / "c"
    with pytest.raises(Exception, match="power cut"):
        run(_args(index_dir, tmp_path / "in.jsonl", output, ledger, 100 * per_token))
    monkeypatch.undo()
    monkeypatch.setenv(KEY_ENV, KEY)
    assert (current_version(str(ledger)), _spend(ledger)) == before
    assert existing_outputs(str(output)) == []  # the run's outputs are removed
    assert orphans(str(ledger)) == []  # and its rows: nothing names them, nothing is left
    # A crash that leaves rows behind (the process killed): they change nothing, and --clean removes them.
    crashed = LedgerRun.start(str(ledger), KEY.encode(), {})
    Path(crashed.data_prefix + "-00000-of-00001.jsonl").write_text('{"unit": "x", "spent": 1e9}\n')
    assert (current_version(str(ledger)), _spend(ledger)) == before
    assert orphans(str(ledger)) == [Path(crashed.data_prefix).name + "-00000-of-00001.jsonl"]
    assert cli_main(["ledger", "--ledger", str(ledger), "--clean"]) == 0
    assert orphans(str(ledger)) == []
    # The next run starts from the version in force and commits the one after it.
    run(_args(index_dir, tmp_path / "in.jsonl", tmp_path / "c" / "c", ledger, 100 * per_token))
    assert current_version(str(ledger)).version == 2


def _prepared(argv):
    options = PipelineOptions(argv)
    return options, prepare(options.view_as(DPTextOptions))


def test_a_concurrent_second_run_is_refused_and_changes_nothing(index_dir, per_token, tmp_path):
    corpus(tmp_path / "in.jsonl")
    ledger = tmp_path / "ledger"
    budget = 100 * per_token
    # A starts (reads version 0); B starts, runs and commits version 1; then A tries to commit.
    options_a, job_a = _prepared(_args(index_dir, tmp_path / "in.jsonl", tmp_path / "a" / "c", ledger, budget))
    run(_args(index_dir, tmp_path / "in.jsonl", tmp_path / "b" / "c", ledger, budget))
    after_b = (current_version(str(ledger)), _spend(ledger))
    with pytest.raises(LedgerConflict, match="another run committed version 1 while this run was running"):
        execute(options_a, job_a)
    assert (current_version(str(ledger)), _spend(ledger)) == after_b
    assert existing_outputs(str(tmp_path / "a" / "c")) == []
    assert orphans(str(ledger)) == []
    assert existing_outputs(str(tmp_path / "b" / "c"))  # B's outputs stand


def test_of_many_simultaneous_commits_exactly_one_wins(tmp_path):
    ledger = str(tmp_path / "ledger")
    runs = [LedgerRun.start(ledger, KEY.encode(), {"n": i}) for i in range(12)]
    for r in runs:
        Path(ledger).mkdir(exist_ok=True)
        Path(r.data_prefix + "-00000-of-00001.jsonl").write_text(json.dumps({"unit": "u", "spent": 1.0}) + "\n")
    barrier, outcomes = threading.Barrier(len(runs)), {}

    def commit(r):
        barrier.wait()
        try:
            outcomes[r.token] = r.commit([r.data_prefix + "-00000-of-00001.jsonl"], 1)
        except LedgerConflict:
            outcomes[r.token] = "conflict"

    threads = [threading.Thread(target=commit, args=(r,)) for r in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [t for t, o in outcomes.items() if o == 1]
    assert len(winners) == 1 and list(outcomes.values()).count("conflict") == len(runs) - 1
    version = current_version(ledger)
    assert version.version == 1 and version.record["run"]["token"] == winners[0]
    assert orphans(ledger) == []  # the losers removed their rows
    winner = next(r for r in runs if r.token == winners[0])
    assert winner.commit([winner.data_prefix + "-00000-of-00001.jsonl"], 1) == 1  # a retried commit is fine
    assert version.record["key_check"] == key_check(KEY.encode())


def test_parquet_input_with_a_ledger(index_dir, per_token, tmp_path):
    users = [HEAVY[0]] * 30 + LIGHT[:5]
    pq.write_table(pa.table({"text": ["cat"] * len(users), "user": users}), tmp_path / "in.parquet")
    ledger = tmp_path / "ledger"
    for number in (1, 2):
        run(_args(index_dir, tmp_path / "in.parquet", tmp_path / f"r{number}" / "c", ledger, 1.5 * CAP * per_token))
    spend = _spend(ledger)
    key = KEY.encode()
    assert spend[unit_hash(key, HEAVY[0])] == pytest.approx(15 * per_token)  # 10, then the 5 left
    assert spend[unit_hash(key, LIGHT[0])] == pytest.approx(2 * per_token)
    second = pq.read_table(next((tmp_path / "r2").glob("c-*.parquet"))).to_pylist()
    assert Counter(r["user"] for r in second)[HEAVY[0]] == 5


@contextlib.contextmanager
def emulator(bucket: str, monkeypatch):
    """tests.gcs_emulator, with google.auth pointed at this emulator's metadata endpoint: google.auth
    reads GCE_METADATA_HOST once, at import, so a second emulator in one process would otherwise
    hand out tokens from the first one's (closed) port."""
    from google.auth.compute_engine import _metadata

    with gcs_emulator(bucket) as root:
        monkeypatch.setattr(_metadata, "_GCE_METADATA_HOST", os.environ["GCE_METADATA_HOST"])
        yield root


def test_a_gs_ledger_on_the_storage_emulator(index_dir, per_token, tmp_path, monkeypatch):
    corpus(tmp_path / "in.jsonl")
    with emulator("dptext-ledger", monkeypatch) as root:
        ledger = f"{root}/ledgers/one"
        budget = 2 * CAP * per_token
        options_late, job_late = _prepared(
            _args(index_dir, tmp_path / "in.jsonl", tmp_path / "late" / "c", ledger, budget)
        )
        for number in (1, 2, 3):
            run(_args(index_dir, tmp_path / "in.jsonl", tmp_path / f"r{number}" / "c", ledger, budget))
            assert current_version(ledger).version == number
        spend = _spend(ledger)
        key = KEY.encode()
        assert spend[unit_hash(key, HEAVY[0])] == pytest.approx(2 * CAP * per_token)
        assert spend[unit_hash(key, LIGHT[0])] == pytest.approx(12 * per_token)
        third = [json.loads(line) for line in shard_lines(str(tmp_path / "r3" / "c") + "-*.jsonl")]
        assert not any(d["user"] in HEAVY for d in third)
        names = [m.path for m in FileSystems.match([ledger + "/*"])[0].metadata_list]
        assert sum("/version-" in n for n in names) == 3
        # A run that started from version 0 cannot commit over them.
        with pytest.raises(LedgerConflict, match="another run committed version 1"):
            execute(options_late, job_late)
        assert current_version(ledger).version == 3 and orphans(ledger) == []


class _SecretManager:
    """A local stand-in for Secret Manager's versions:access endpoint (same path, JSON and base64)."""

    def __init__(self, secrets: dict):
        import http.server

        seen = self.authorizations = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                seen.append(self.headers.get("Authorization"))
                name = self.path.split("?")[0].removeprefix("/v1/").removesuffix(":access")
                if name not in secrets:
                    self.send_response(404)
                    self.end_headers()
                    return
                body = json.dumps({"payload": {"data": base64.b64encode(secrets[name].encode()).decode()}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"


def test_the_key_from_secret_manager_as_a_scheduled_launch_reads_it(index_dir, per_token, tmp_path, monkeypatch):
    name = "projects/p/secrets/dptext-ledger-key/versions/latest"
    manager = _SecretManager({name: KEY + "\n"})  # gcloud's --data-file=- keeps echo's newline
    monkeypatch.setattr(ledger_module, "SECRET_MANAGER", manager.url)
    monkeypatch.delenv(KEY_ENV)
    corpus(tmp_path / "in.jsonl")
    ledger = tmp_path / "ledger"
    with emulator("unused", monkeypatch):  # its metadata endpoint hands the launcher its credentials
        environ: dict = {}
        assert ledger_module.ledger_key(environ, secret=name) == KEY.encode() and environ[KEY_ENV] == KEY
        assert manager.authorizations[-1] == "Bearer emulator"
        with pytest.raises(ledger_module.LedgerError, match="answered HTTP 404"):
            ledger_module.ledger_key({}, secret="projects/p/secrets/other/versions/1")
        with pytest.raises(ledger_module.LedgerError, match="expected a secret version"):
            ledger_module.ledger_key({}, secret="dptext-ledger-key")
        run(
            _args(
                index_dir,
                tmp_path / "in.jsonl",
                tmp_path / "a" / "c",
                ledger,
                100 * per_token,
                "--ledger-key-secret",
                name,
            )
        )
    monkeypatch.setenv(KEY_ENV, KEY)  # the same key as the one in the secret: the ledger agrees
    assert LedgerRun.start(str(ledger), KEY.encode(), {}).base_version == 1
    assert set(_spend(ledger)) == {unit_hash(KEY.encode(), u) for u in HEAVY + LIGHT}


def test_ctrl_c_during_a_ledger_run_leaves_the_version_in_force(index_dir, per_token, tmp_path):
    """The real `dptext run` (its supervisor and job process), interrupted with SIGINT mid-job:
    exit 130, no outputs, the ledger exactly as before; the same command again commits."""
    records = [{"user": f"p{i % 50}", "text": "the cat sat on a mat " * 3} for i in range(3000)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    ledger = tmp_path / "ledger"
    budget = 1000 * per_token
    run(_args(index_dir, tmp_path / "in.jsonl", tmp_path / "first" / "c", ledger, budget))
    before = (current_version(str(ledger)), _spend(ledger))
    output = tmp_path / "second" / "c"
    argv = [sys.executable, "-m", "dptext.pipeline.cli", "run", "--batch-chars", "1"]
    argv += _args(index_dir, tmp_path / "in.jsonl", output, ledger, budget)
    env = {k: v for k, v in os.environ.items() if k != "DPTEXT_RUN_TOKEN"}
    child = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "second").glob("beam-temp-*")) and time.monotonic() < deadline:
        assert child.poll() is None, child.communicate()[1].decode()[-2000:]
        time.sleep(0.2)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 128 + signal.SIGINT, err.decode()[-2000:]
    assert existing_outputs(str(output)) == []
    assert (current_version(str(ledger)), _spend(ledger)) == before
    run(_args(index_dir, tmp_path / "in.jsonl", tmp_path / "third" / "c", ledger, budget))
    assert current_version(str(ledger)).version == 2


def _honour_if_generation_match(monkeypatch) -> None:
    """Give the storage emulator Cloud Storage's documented precondition, which it ignores: an upload
    with ifGenerationMatch=0 fails with HTTP 412 when the object exists (checked and created under
    one lock, as GCS does atomically)."""
    from http import HTTPStatus

    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    lock, upload = threading.Lock(), objects._multipart_upload

    def multipart_upload(request, response, storage):
        with lock:
            if request.query.get("ifGenerationMatch", [None])[0] == "0":
                name = request.query["name"][0] if "name" in request.query else request.data["meta"].get("name")
                try:
                    storage.get_file_obj(request.params["bucket_name"], name)
                except NotFound:
                    pass
                else:
                    response.status = HTTPStatus.PRECONDITION_FAILED
                    error = {
                        "reason": "conditionNotMet",
                        "message": "At least one of the pre-conditions you specified did not hold.",
                    }
                    response.json({"error": {"code": 412, "message": error["message"], "errors": [error]}})
                    return None
            return upload(request, response, storage)

    monkeypatch.setattr(objects, "_multipart_upload", multipart_upload)


def test_on_gs_of_many_simultaneous_commits_exactly_one_wins(monkeypatch):
    """The commit record is uploaded with ifGenerationMatch=0 and a 412 is a conflict: with the early
    exists() check switched off, only the precondition stands between the racing runs."""
    from google.cloud import storage

    with emulator("dptext-race", monkeypatch) as root:
        _honour_if_generation_match(monkeypatch)
        monkeypatch.setattr(storage.Blob, "exists", lambda self, *args, **kwargs: False)
        ledger = f"{root}/ledgers/race"
        runs = [LedgerRun.start(ledger, KEY.encode(), {"n": i}) for i in range(8)]
        for r in runs:
            with FileSystems.create(r.data_prefix + "-00000-of-00001.jsonl") as handle:
                handle.write(b'{"unit": "u", "spent": 1.0}\n')
        barrier, outcomes = threading.Barrier(len(runs)), {}

        def commit(r):
            barrier.wait()
            try:
                outcomes[r.token] = r.commit([r.data_prefix + "-00000-of-00001.jsonl"], 1)
            except LedgerConflict:
                outcomes[r.token] = "conflict"

        threads = [threading.Thread(target=commit, args=(r,)) for r in runs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [t for t, o in outcomes.items() if o == 1]
        assert len(winners) == 1 and list(outcomes.values()).count("conflict") == len(runs) - 1
        assert current_version(ledger).record["run"]["token"] == winners[0]
        assert orphans(ledger) == []


def test_a_refused_commit_removes_the_runs_outputs_inside_the_job(tmp_path):
    """The commit step itself removes the outputs when it loses, so a launched job that nobody waits
    for (the Flex Template) leaves no release the ledger does not count."""
    from dptext.pipeline.units import commit_after_outputs

    ledger = str(tmp_path / "ledger")
    late, early = (LedgerRun.start(ledger, KEY.encode(), {}) for _ in range(2))
    for r in (late, early):
        Path(ledger).mkdir(exist_ok=True)
        Path(r.data_prefix + "-00000-of-00001.jsonl").write_text('{"unit": "u", "spent": 1.0}\n')
    early.commit([early.data_prefix + "-00000-of-00001.jsonl"], 1)
    prefix = tmp_path / "out" / "corpus"
    prefix.parent.mkdir()
    for name in ("corpus-00000-of-00001.jsonl", "corpus.withheld-00000-of-00001.jsonl", "corpus.privacy_report.json"):
        (prefix.parent / name).write_text("{}\n")
    (prefix.parent / "notes.txt").write_text("not an output of this prefix\n")
    with pytest.raises(LedgerConflict):
        commit_after_outputs([late.data_prefix + "-00000-of-00001.jsonl"], late, 1, str(prefix), [], [])
    assert existing_outputs(str(prefix)) == [] and (prefix.parent / "notes.txt").exists()
    assert current_version(ledger).record["run"]["token"] == early.token and orphans(ledger) == []


@pytest.mark.slow
@pytest.mark.parametrize("runner", ["FlinkRunner", "SparkRunner"])
def test_a_capped_ledger_run_on_flink_and_spark_matches_the_direct_runner(index_dir, per_token, tmp_path, runner):
    """Under a test seed the admission priorities are fixed per record, so every runner must withhold
    the same documents and commit the same spends (the in-job commit after all outputs, the per-bundle
    sums and the join all run on the engine)."""
    from dptext.pipeline.engines.catalog import ENGINES
    from dptext.pipeline.engines.install import installed

    missing = [e.label for e in ENGINES.values() if not installed(e)]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: run `make engines`")
    records = corpus(tmp_path / "in.jsonl")
    spends, withheld = {}, {}
    for name in ("DirectRunner", runner):
        ledger, output = tmp_path / f"ledger-{name}", tmp_path / name / "c"
        args = _args(index_dir, tmp_path / "in.jsonl", output, ledger, 2 * CAP * per_token, "--test-seed", "7")
        assert cli_main(["run", *args, "--runner", name]) == 0
        spends[name] = _spend(ledger)
        withheld[name] = sorted(json.loads(line)["offset"] for line in shard_lines(f"{output}.withheld-*.jsonl"))
        assert len(shard_lines(f"{output}-*.jsonl")) + len(withheld[name]) == len(records)
    assert withheld[runner] == withheld["DirectRunner"] and len(withheld[runner]) == len(HEAVY) * (40 - CAP)
    assert spends[runner].keys() == spends["DirectRunner"].keys()
    assert all(spends[runner][k] == pytest.approx(v, rel=1e-12) for k, v in spends["DirectRunner"].items())
