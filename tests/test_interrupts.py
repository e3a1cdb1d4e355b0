"""The real `dptext run` process interrupted mid-flight (issue 12 #7) and run twice (#1).

SIGINT (to the process, or to its process group as a terminal's Ctrl-C does) and SIGTERM at
several points of a job: one line on stderr, exit 128 + signal, no privatized data left under the
prefix (no beam-temp-*, no shard, no report), no worker process left; then the same command again
gives exactly a clean run's outputs. The job process killed on its own (the OOM killer) is
cleaned up the same way. A 1-character --batch-chars puts every document in a batch of
its own, so with --test-seed every document's noise is fixed by its file and offset: outputs of
different runs (one process or two workers) are comparable line for line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dptext.pipeline.outputs import existing_outputs, lock_path
from tests.conftest import build_random_index, shard_lines

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = 2400
TWO_WORKERS = ["--direct_running_mode", "multi_processing", "--direct_num_workers", "2"]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A 2,400-document corpus in two files, a tiny real index, and a clean run's outputs."""
    root = tmp_path_factory.mktemp("interrupts")
    index = build_random_index(root / "idx", 200, 8, 8, seed=1).path
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / f"{name}.txt").write_text(
            "".join(" ".join(f"w{j}" for j in rng.integers(0, 220, 12)) + "\n" for _ in range(DOCUMENTS // 2)),
            encoding="utf-8",
        )
    args = [
        "--input",
        str(root / "*.txt"),
        "--index",
        str(index),
        "--epsilon",
        "50",
        "--test-seed",
        "3",
        "--batch-chars",
        "1",
    ]
    clean = root / "clean" / "c"
    finished = _start(args, clean)
    out, err = finished.communicate(timeout=120)
    assert finished.returncode == 0, err.decode()
    return {"root": root, "args": args, "clean": _outputs(clean)}


def _start(args: list[str], output: Path, *extra: str) -> subprocess.Popen:
    """`dptext run` as a user starts it: its own session (a terminal's process group)."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
    }
    env.pop("DPTEXT_RUN_TOKEN", None)
    return subprocess.Popen(
        [sys.executable, "-m", "dptext.pipeline.cli", "run", *args, "--output", str(output), *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def _outputs(prefix: Path) -> dict:
    report = json.loads(Path(f"{prefix}.privacy_report.json").read_text(encoding="utf-8"))
    return {
        "documents": sorted(shard_lines(f"{prefix}-*-of-*.txt")),
        "dead_letter": shard_lines(f"{prefix}.dead_letter-*-of-*.jsonl"),
        "counts": report["counts"],
    }


def _processes(root_pid: int) -> list[int]:
    """root_pid and every live descendant (from /proc; zombies count as gone)."""
    parent, state = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            parent[int(entry)], state[int(entry)] = int(fields[1]), fields[0]
    found, frontier = [], [root_pid]
    while frontier:
        pid = frontier.pop()
        if pid in state and state[pid] != "Z":
            found.append(pid)
        frontier += [p for p, pp in parent.items() if pp == pid]
    return found


def _wait_until(stage: str, proc: subprocess.Popen, output: Path, timeout: float = 60) -> None:
    """Block until the job reaches the stage: "start" (just launched), "temp" (Beam's temporary
    directory exists: the job is running), "data" (privatized documents are on disk in it)."""
    if stage == "start":
        time.sleep(0.3)
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the job ended before stage {stage}: {proc.communicate()[1].decode()[-2000:]}"
        temps = list(output.parent.glob(f"beam-temp-{output.name}-*")) if output.parent.is_dir() else []
        if temps and (stage == "temp" or any(f.is_file() for t in temps for f in t.iterdir())):
            return
        time.sleep(0.02)
    raise AssertionError(f"stage {stage} not reached in {timeout} s")


def _interrupt(job, name: str, signum: int, target: str, stage: str, *extra: str) -> Path:
    output = job["root"] / name / "c"
    proc = _start(job["args"], output, *extra)
    _wait_until(stage, proc, output)
    tree = _processes(proc.pid)
    if stage != "start":
        assert len(tree) >= (5 if extra else 1), "the job's worker processes were not all started"
    if target == "job":  # the job process dies alone (the OOM killer, say)
        (job_pid,) = [
            p for p in tree if Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1] == str(proc.pid)
        ]
        os.kill(job_pid, signum)
    else:
        (os.killpg if target == "group" else os.kill)(proc.pid, signum)
    if target == "twice":  # an impatient second Ctrl-C during the clean-up
        time.sleep(0.03)
        try:
            os.kill(proc.pid, signum)
        except ProcessLookupError:
            pass
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum
    lines = err.decode().splitlines()
    assert "Traceback" not in err.decode()
    # Beam relays its worker processes' start-up warnings (a normal run prints them too)
    ours = [line for line in lines if not line.startswith("WARNING:apache_beam.runners.portability")]
    what = f"the job process was killed by signal {signum}" if target == "job" else "interrupted"
    if stage == "start":
        assert ours == [f"dptext run: {what} before this run wrote anything under {output}"], lines
    else:
        assert ours == [f"dptext run: {what}; partial outputs under {output} removed"], lines
    if not extra:
        assert lines == ours  # one process: exactly one line
    assert "dptext counters" not in out.decode()
    time.sleep(0.2)
    assert [p for p in tree if p in _processes(p)] == [], "a job or worker process outlived the interrupt"
    assert existing_outputs(str(output)) == []
    assert not output.parent.exists() or sorted(p.name for p in output.parent.iterdir()) == []
    return output


def _rerun_equals_clean(job, output: Path, *extra: str) -> None:
    proc = _start(job["args"], output, *extra)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert _outputs(output) == job["clean"]
    assert sorted(p.name for p in output.parent.iterdir()) == [
        "c-00000-of-00001.txt",
        "c.dead_letter-00000-of-00001.jsonl",
        "c.privacy_report.json",
        "c.privacy_report.md",
    ]


@pytest.mark.parametrize(
    "name, signum, target, stage, workers",
    [
        ("int-start", signal.SIGINT, "process", "start", False),
        ("term-running", signal.SIGTERM, "process", "temp", False),
        ("ctrl-c-data", signal.SIGINT, "group", "data", False),
        ("int-twice-data", signal.SIGINT, "twice", "data", False),
        ("job-killed-data", signal.SIGKILL, "job", "data", False),
        ("term-data-2w", signal.SIGTERM, "process", "data", True),
        ("ctrl-c-data-2w", signal.SIGINT, "group", "data", True),
    ],
)
def test_an_interrupted_run_leaves_nothing_and_says_so_in_one_line(job, name, signum, target, stage, workers):
    output = _interrupt(job, name, signum, target, stage, *(TWO_WORKERS if workers else ()))
    if name in ("ctrl-c-data", "job-killed-data"):  # the same command again: a clean run
        _rerun_equals_clean(job, output)


def test_the_same_command_twice_is_refused_and_overwrite_gives_one_clean_run(job):
    """First run with 2 workers (2 shards), second in one process (1 shard): refused without
    --overwrite, leaving the first run intact; with it, exactly one clean run's records."""
    output = job["root"] / "twice" / "c"
    first = _start(job["args"], output, *TWO_WORKERS)
    assert first.wait(120) == 0
    assert len(list(output.parent.glob("c-*-of-00002.txt"))) == 2
    assert _outputs(output) == job["clean"]
    again = _start(job["args"], output)
    _, err = again.communicate(timeout=120)
    assert again.returncode == 2
    assert err.decode() == (
        f"dptext run: error: --output {output}: {output}-00000-of-00002.txt and 4 more of its "
        "outputs already exist; pass --overwrite to replace them, or choose another --output\n"
    )
    assert len(list(output.parent.glob("c-*-of-00002.txt"))) == 2
    _rerun_equals_clean(job, output, "--overwrite")  # one shard, no mix with the first run's two


def test_the_same_command_twice_at_once_runs_once(job):
    """Two identical commands started together: one runs, the other is refused (the prefix lock,
    or the outputs if the first already finished); the prefix holds one clean run."""
    output = job["root"] / "concurrent" / "c"
    procs = [_start(job["args"], output) for _ in range(2)]
    results = [(p.wait(180), p.communicate()[1].decode()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2], results
    (refusal,) = [err for code, err in results if code == 2]
    assert len(refusal.splitlines()) == 1
    assert ("another dptext run is writing to this prefix" in refusal) or ("already exist" in refusal)
    assert _outputs(output) == job["clean"]
    assert not Path(lock_path(str(output))).exists()
