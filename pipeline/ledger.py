"""The budget ledger: what each privacy unit has spent across runs, kept as keyed hashes.

A ledger is a directory (local path or gs:// prefix) of versions:

    LEDGER/version-000007.json           the commit record of version 7 (written last, atomically)
    LEDGER/data-000007-RUNTOKEN-SSSSS-of-NNNNN.jsonl   its rows: {"unit": HMAC hex, "spent": epsilon}

The current version is the highest-numbered commit record. A run reads version v when it starts,
writes every row of v + 1 (each unit's spend so far plus this run's released tokens x per-token pure
epsilon, basic composition) into data files named by its own run token, and only then creates
version-(v+1).json with create-if-absent semantics: os.link on a local filesystem (fails if the
name exists), ifGenerationMatch=0 on Cloud Storage. So:
  - a crash or an interrupted run before that create leaves version v current (its data files are
    orphans that no commit record names, and `discard` or the next `dptext ledger --clean` removes them);
  - of two runs that both started from v, exactly one creates version v + 1; the other fails with
    LedgerConflict, deletes its own data files and changes nothing.

Units are stored only as HMAC-SHA256(DPTEXT_LEDGER_KEY, unit id); the commit record holds an HMAC of a
fixed string under the same key, so a run with another key is refused instead of giving every unit a
fresh budget.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import io
import json
import math
import os
import re
import uuid
from collections import Counter
from dataclasses import dataclass, field

from dptext.transforms.accounting import histogram_percentiles
from dptext.transforms.errors import DptextError

KEY_ENV = "DPTEXT_LEDGER_KEY"
MIN_KEY_CHARACTERS = 16
FORMAT = "dptext-ledger/1"
_VERSION = re.compile(r"version-(\d{6,})\.json")
# Float rounding of sums of per-token epsilons: a spend within this relative margin of the budget
# counts as within it (20 tokens x 0.1 sums to 2.0000000000000004, which a budget of 2 must admit).
RELATIVE_TOLERANCE = 1e-9


class LedgerError(DptextError):
    """The ledger cannot be used as given; the message names the ledger and what would work."""


class LedgerConflict(LedgerError):
    """Another run committed the version this run was going to write."""


def ledger_key(environ=None, secret: str | None = None) -> bytes:
    """The HMAC key from DPTEXT_LEDGER_KEY (required with --budget-ledger); when it is not set and
    --ledger-key-secret names a Secret Manager secret version, the key is read from there into this
    process's environment (how the Flex Template launcher of a scheduled run gets it)."""
    environ = os.environ if environ is None else environ
    value = environ.get(KEY_ENV)
    if not value and secret:
        value = environ[KEY_ENV] = read_secret(secret)
    if not value:
        raise LedgerError(
            f"--budget-ledger needs the environment variable {KEY_ENV} (or --ledger-key-secret): the secret key "
            "under which units are stored as HMAC-SHA256 hashes (the same key for every run on this ledger)"
        )
    if len(value) < MIN_KEY_CHARACTERS:
        raise LedgerError(
            f"{KEY_ENV} has {len(value)} characters; use at least {MIN_KEY_CHARACTERS} (a short key lets anyone "
            "who reads the ledger test guessed unit ids against it)"
        )
    return value.encode("utf-8")


SECRET_MANAGER = "https://secretmanager.googleapis.com/v1"
_SECRET_NAME = re.compile(r"projects/[^/]+/secrets/[^/]+/versions/[^/]+")


def read_secret(name: str) -> str:
    """A Secret Manager secret version's value (UTF-8, one trailing newline dropped), read with the
    process's Google credentials; LedgerError naming the secret (never its value) when it cannot be."""
    import base64

    import google.auth
    from google.auth.transport.requests import AuthorizedSession

    if not _SECRET_NAME.fullmatch(name):
        raise LedgerError(
            f"--ledger-key-secret {name}: expected a secret version, projects/PROJECT/secrets/NAME/versions/VERSION "
            "(VERSION may be latest)"
        )
    try:
        credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
        response = AuthorizedSession(credentials).get(f"{SECRET_MANAGER}/{name}:access", timeout=60)
    except Exception as err:  # no credentials, no network
        raise LedgerError(f"--ledger-key-secret {name}: cannot be read ({type(err).__name__})") from None
    if response.status_code != 200:
        raise LedgerError(
            f"--ledger-key-secret {name}: Secret Manager answered HTTP {response.status_code} (does the secret have "
            "a version, and may this account access it?)"
        )
    value = base64.b64decode(response.json()["payload"]["data"]).decode("utf-8")
    return value[:-1] if value.endswith("\n") else value


def unit_hash(key: bytes, unit: str) -> str:
    return hmac.new(key, unit.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def key_check(key: bytes) -> str:
    """An HMAC of a fixed string: tells whether a run has the ledger's key, and reveals nothing of it."""
    return hmac.new(key, b"dptext ledger key check", hashlib.sha256).hexdigest()


def allowance(spent: float, budget: float, per_token_epsilon: float) -> int:
    """How many more tokens a unit that has spent `spent` may release under `budget` (basic composition)."""
    room = budget * (1 + RELATIVE_TOLERANCE) - spent
    if room < 0 or per_token_epsilon <= 0:
        return 0
    tokens = math.floor(room / per_token_epsilon)
    while tokens > 0 and spent + tokens * per_token_epsilon > budget * (1 + RELATIVE_TOLERANCE):
        tokens -= 1
    return max(0, tokens)


def _is_remote(uri: str) -> bool:
    return "://" in uri


def _join(uri: str, name: str) -> str:
    return f"{uri.rstrip('/')}/{name}" if _is_remote(uri) else os.path.join(uri, name)


def _list(uri: str) -> list[str]:
    """Names (not paths) of the files directly in the ledger."""
    if not _is_remote(uri):
        try:
            return sorted(os.listdir(uri))
        except FileNotFoundError:
            return []
        except NotADirectoryError:
            raise LedgerError(f"ledger {uri} is a file; a ledger is a directory") from None
    from apache_beam.io.filesystems import FileSystems

    base = uri.rstrip("/") + "/"
    found = FileSystems.match([base + "*"])[0].metadata_list
    return sorted(m.path[len(base) :] for m in found if "/" not in m.path[len(base) :])


def _read(path: str) -> bytes:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path, compression_type="uncompressed") as handle:
        return handle.read()


def _remove(uri: str, names: list[str]) -> None:
    """Delete files of the ledger (best effort: an orphan data file changes nothing)."""
    paths = [_join(uri, name) for name in names]
    if not _is_remote(uri):
        for path in paths:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
        return
    from apache_beam.io.filesystems import FileSystems

    try:
        if paths:
            FileSystems.delete(paths)
    except Exception:
        pass


def _create_exclusive(path: str, data: bytes) -> bool:
    """Create `path` holding `data` unless it exists (atomically); False if it existed."""
    if not _is_remote(path):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        temporary = f"{path}.{uuid.uuid4().hex}.tmp"
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)  # fails with FileExistsError if the name exists: the atomic claim
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(temporary)
    if not path.startswith("gs://"):
        raise LedgerError(f"--budget-ledger {path}: only local paths and gs:// are supported")
    from google.api_core.exceptions import PreconditionFailed
    from google.cloud import storage

    bucket, _, name = path[len("gs://") :].partition("/")
    blob = storage.Client().bucket(bucket).blob(name)
    if blob.exists():  # an early answer; the precondition below is what makes the create atomic
        return False
    try:
        blob.upload_from_string(data, content_type="application/json", if_generation_match=0)
    except PreconditionFailed:
        return False
    return True


@dataclass(frozen=True)
class LedgerVersion:
    """One committed version: its number, its data files (full paths) and its commit record."""

    uri: str
    version: int
    files: tuple[str, ...] = ()
    record: dict = field(default_factory=dict, compare=False)


def current_version(uri: str) -> LedgerVersion:
    """The ledger's current version (version 0, empty, when nothing was committed yet)."""
    versions = sorted(int(m.group(1)) for name in _list(uri) if (m := _VERSION.fullmatch(name)))
    if not versions:
        return LedgerVersion(uri, 0)
    version = versions[-1]
    path = _join(uri, f"version-{version:06d}.json")
    try:
        record = json.loads(_read(path).decode("utf-8"))
        files = tuple(_join(uri, name) for name in record["files"])
        if record.get("format") != FORMAT or record.get("version") != version:
            raise ValueError("format or version field")
    except (ValueError, KeyError, TypeError) as err:
        raise LedgerError(f"{path}: not a dptext ledger commit record ({err}); the ledger is damaged") from None
    return LedgerVersion(uri, version, files, record)


@dataclass(frozen=True)
class LedgerRun:
    """A run's use of a ledger: the version it read and where it writes the next. Travels to the job
    (it is small and holds no key); `commit` runs at the end of the job, after every output is written."""

    uri: str
    base_version: int
    base_files: tuple[str, ...]
    token: str
    key_check: str
    run: dict  # what the commit record says about this run (no unit, no text)

    @classmethod
    def start(cls, uri: str, key: bytes, run: dict) -> "LedgerRun":
        if not uri or not uri.strip():
            raise LedgerError("--budget-ledger must name a directory (local path or gs://bucket/prefix)")
        current = current_version(uri)
        found = current.record.get("key_check")
        if current.version and found != key_check(key):
            raise LedgerError(
                f"--budget-ledger {uri}: {KEY_ENV} is not the key this ledger was written with (version "
                f"{current.version}); with another key every unit would look new and get a fresh budget"
            )
        return cls(uri, current.version, current.files, uuid.uuid4().hex, key_check(key), dict(run))

    @property
    def next_version(self) -> int:
        return self.base_version + 1

    @property
    def data_prefix(self) -> str:
        """Prefix of this run's data files (Beam appends -SSSSS-of-NNNNN.jsonl)."""
        return _join(self.uri, f"data-{self.next_version:06d}-{self.token}")

    @property
    def record_path(self) -> str:
        return _join(self.uri, f"version-{self.next_version:06d}.json")

    def commit(self, files: list[str], units: int, released: dict | None = None) -> int:
        """Make this run's rows the current version; LedgerConflict (after deleting them) if another
        run committed that version first. Idempotent: a retried commit of this run succeeds."""
        names = sorted(_relative(self.uri, path) for path in files)
        record = {
            "format": FORMAT,
            "version": self.next_version,
            "previous": self.base_version,
            "files": names,
            "units": units,
            "key_check": self.key_check,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "run": {**self.run, "token": self.token, **(released or {})},
        }
        data = (json.dumps(record, indent=1, sort_keys=True) + "\n").encode("utf-8")
        if _create_exclusive(self.record_path, data):
            return self.next_version
        if self._committed_by_us():
            return self.next_version
        self.discard()
        raise LedgerConflict(
            f"--budget-ledger {self.uri}: another run committed version {self.next_version} while this run "
            f"was running (this run started from version {self.base_version}); two runs on one ledger cannot "
            "both commit. The ledger is unchanged by this run and its outputs are removed; run it again"
        )

    def _committed_by_us(self) -> bool:
        try:
            record = json.loads(_read(self.record_path).decode("utf-8"))
        except Exception:
            return False
        return record.get("run", {}).get("token") == self.token

    def conflict(self) -> str | None:
        """After a failed job: the conflict message if another run committed our version, else None."""
        names = _list(self.uri)
        if f"version-{self.next_version:06d}.json" in names and not self._committed_by_us():
            return (
                f"--budget-ledger {self.uri}: another run committed version {self.next_version} while this run "
                f"was running (this run started from version {self.base_version}); two runs on one ledger cannot "
                "both commit. The ledger is unchanged by this run and its outputs are removed; run it again"
            )
        return None

    def discard(self) -> list[str]:
        """Delete this run's data files unless its version was committed (after a failure)."""
        if self._committed_by_us():
            return []
        stem = f"data-{self.next_version:06d}-{self.token}"
        mine = [n for n in _list(self.uri) if n.startswith(stem)]
        _remove(self.uri, mine)
        return mine


def _relative(uri: str, path: str) -> str:
    base = uri.rstrip("/") + "/" if _is_remote(uri) else os.path.join(os.path.abspath(uri), "")
    full = path if _is_remote(uri) else os.path.abspath(path)
    if not full.startswith(base):
        raise LedgerError(f"ledger data file {path} is not inside the ledger {uri}")
    return full[len(base) :]


def read_rows(version: LedgerVersion):
    """(unit hash, spent) of every row of a version, file by file (streamed: one line at a time)."""
    from apache_beam.io.filesystems import FileSystems

    for path in version.files:
        with FileSystems.open(path, compression_type="uncompressed") as handle:
            for line in io.TextIOWrapper(handle, encoding="utf-8"):
                if line.strip():
                    row = json.loads(line)
                    yield row["unit"], float(row["spent"])


def orphans(uri: str) -> list[str]:
    """Data files no commit record names (left by crashed, interrupted or refused runs)."""
    names = _list(uri)
    named = set()
    for name in names:
        if _VERSION.fullmatch(name):
            try:
                named.update(json.loads(_read(_join(uri, name)).decode("utf-8"))["files"])
            except Exception:
                return []  # a record we cannot read: never delete what it might name
    return [name for name in names if name.startswith("data-") and name not in named]


def spend_summary(version: LedgerVersion, budget: float | None, per_token_epsilon: float | None) -> dict:
    """Spend percentiles over the units of a version and how many are exhausted (their remaining budget
    admits no further token at `per_token_epsilon`). Memory: one count per distinct spend value."""
    histogram: Counter = Counter()
    for _, spent in read_rows(version):
        histogram[spent] += 1
    units = sum(histogram.values())
    summary = {"version": version.version, "units": units, "spent": histogram_percentiles(histogram, units)}
    if budget is not None and per_token_epsilon:
        summary["unit_budget"] = budget
        summary["per_token_epsilon"] = per_token_epsilon
        summary["exhausted"] = sum(n for s, n in histogram.items() if allowance(s, budget, per_token_epsilon) == 0)
    return summary


def main(argv: list[str]) -> int:
    """`dptext ledger --ledger URI`: the current version's spend percentiles and exhausted units."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="dptext ledger",
        description="Summarise a budget ledger: per-unit spend (basic composition) and exhausted units. "
        "Needs no key: the ledger holds only keyed hashes of units.",
    )
    parser.add_argument("--ledger", required=True, help="ledger directory (local path or gs://)")
    parser.add_argument(
        "--unit-budget", type=float, help="budget to measure exhaustion against (default: the last run's)"
    )
    parser.add_argument("--clean", action="store_true", help="delete data files no commit record names")
    args = parser.parse_args(argv)
    version = current_version(args.ledger)
    run = version.record.get("run", {})
    budget = args.unit_budget if args.unit_budget is not None else run.get("unit_budget")
    summary = spend_summary(version, budget, run.get("per_token_epsilon"))
    if not version.version:
        missing = not _is_remote(args.ledger) and not os.path.isdir(args.ledger)
        print(f"ledger {args.ledger}: " + ("no such directory" if missing else "empty (no run has committed to it)"))
    else:
        spent = summary["spent"]
        print(
            f"ledger {args.ledger}: version {version.version} ({version.record.get('created')}), "
            f"{summary['units']:,} units"
        )
        if spent:
            figures = ", ".join(f"{k} {v:.6g}" for k, v in spent.items())
            print(f"  spent epsilon per unit (basic composition): {figures}")
        if "exhausted" in summary:
            print(
                f"  exhausted: {summary['exhausted']:,} units (their remaining budget of {budget:g} admits no "
                f"token at the last run's per-token epsilon {summary['per_token_epsilon']:g})"
            )
    stale = orphans(args.ledger)
    if stale and args.clean:
        _remove(args.ledger, stale)
        print(f"  removed {len(stale)} data files of runs that never committed")
    elif stale:
        print(f"  {len(stale)} data files of runs that never committed (--clean removes them)")
    return 0
