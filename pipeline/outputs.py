"""A run owns its --output prefix: what it writes there, refusing or replacing it, removing it.

Before the job, dptext refuses a prefix that already holds outputs (or deletes them first with
--overwrite), holds a lock on the prefix for the run (a file outside the output directory), and
removes what it wrote when the job fails or is interrupted. So a prefix never holds two runs'
shards (every record twice, two noise draws) under a report that counts one, and an old report
never outlives the run that replaced it.

A run's outputs under PREFIX (Beam names its temporary directories beam-temp-NAME-UUID1HEX):
  PREFIX-SSSSS-of-NNNNN.{txt,jsonl,parquet}, PREFIX.dead_letter-SSSSS-of-NNNNN.jsonl,
  PREFIX.withheld-SSSSS-of-NNNNN.jsonl, PREFIX.privacy_report.{json,md}, and DIR/beam-temp-NAME-*,
  DIR/beam-temp-NAME.dead_letter-*, DIR/beam-temp-NAME.withheld-*.
Anything else, PREFIX2-00000-of-00001.txt or PREFIX-notes.txt, is not this prefix's.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import shutil
import tempfile
import uuid

from dptext.pipeline.errors import OptionsError

LOCK_SUFFIX = ".lock"
RUN_TOKEN_ENV = "DPTEXT_RUN_TOKEN"  # set by `dptext run` for its job process (see pipeline.cli)
GLOB_CHARACTERS = "*?["


def is_remote(path: str) -> bool:
    return "://" in path


def _split(prefix: str) -> tuple[str, str]:
    """(directory, last component) of a local path or a URI."""
    if is_remote(prefix):
        head, _, tail = prefix.rpartition("/")
        return head, tail
    return os.path.dirname(prefix), os.path.basename(prefix)


def _patterns(name: str) -> tuple[re.Pattern, re.Pattern]:
    """(this prefix's files in its directory, this prefix's Beam temporary directories)."""
    n = re.escape(name)
    files = re.compile(
        rf"{n}(-\d{{5,}}-of-\d{{5,}}\.(txt|jsonl|parquet)"
        rf"|\.(dead_letter|withheld)-\d{{5,}}-of-\d{{5,}}\.jsonl|\.privacy_report\.(json|md))"
    )
    temps = re.compile(rf"beam-temp-{n}(\.dead_letter|\.withheld)?-[0-9a-f]{{32}}")
    return files, temps


def check_prefix(prefix: str | None) -> None:
    """Refuse an --output that cannot be a prefix of files, before anything is read or written."""
    if prefix is None:
        raise OptionsError("--output is required")
    if not prefix.strip():
        raise OptionsError("--output must not be empty; give a file prefix such as out/corpus")
    if any(c in prefix for c in GLOB_CHARACTERS):
        raise OptionsError(
            f"--output {prefix}: '*', '?' and '[' are not allowed in the output prefix (Beam "
            "reads them as a pattern when it replaces shards); choose a plain path"
        )
    directory, name = _split(prefix)
    example = prefix.rstrip("/\\") + "/corpus"
    if not name or name in (".", "..") or (is_remote(prefix) and "/" not in prefix.split("://", 1)[1]):
        raise OptionsError(
            f"--output {prefix} names a directory or bucket, not a file prefix; use e.g. --output {example}"
        )
    if is_remote(prefix):
        return
    if os.path.isdir(prefix):
        raise OptionsError(
            f"--output {prefix} is a directory; the output is a file prefix inside it, e.g. --output {example}"
        )
    parent = os.path.abspath(directory or ".")
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise OptionsError(f"--output {prefix}: {parent} is a file, not a directory; choose a prefix in a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OptionsError(
            f"--output {prefix}: cannot write in {parent} (permission denied); choose a writable directory"
        )


def check_input_is_not_output(pattern: str, prefix: str) -> None:
    """Refuse an --input that matches outputs of this --output prefix: a run would read the
    privatized output of an earlier run as its input (and --overwrite would delete it first)."""
    from dptext.pipeline.io import input_files

    if is_remote(pattern) != is_remote(prefix) or (
        is_remote(prefix) and pattern.split("://")[0] != prefix.split("://")[0]
    ):
        return  # different filesystems: nothing can overlap, so nothing is listed

    def norm(path: str) -> str:
        return path if is_remote(path) else os.path.abspath(path)

    overlap = sorted({norm(p) for p in input_files(pattern)} & {norm(p) for p in existing_outputs(prefix)})
    if overlap:
        raise OptionsError(
            f"--input {pattern} matches {overlap[0]}, an output of --output {prefix} (a run "
            "writes there and --overwrite deletes it); narrow --input or choose another --output"
        )


def existing_outputs(prefix: str) -> list[str]:
    """This prefix's outputs that exist now (files, then Beam's temporary directories or files)."""
    directory, name = _split(prefix)
    files, temps = _patterns(name)
    if not is_remote(prefix):
        try:
            entries = os.listdir(directory or ".")
        except (FileNotFoundError, NotADirectoryError):
            return []
        return _final_first(os.path.join(directory, e) for e in entries if files.fullmatch(e) or temps.fullmatch(e))
    from apache_beam.io.filesystems import FileSystems

    found = []
    for result in FileSystems.match([prefix + "*", f"{directory}/beam-temp-{name}**"]):
        for meta in result.metadata_list:
            rest = meta.path[len(directory) + 1 :]
            first = rest.split("/", 1)[0]
            if (files.fullmatch(rest) or ("/" in rest and temps.fullmatch(first))) and meta.path not in found:
                found.append(meta.path)
    return _final_first(found)


def _final_first(paths) -> list[str]:
    """Sorted, Beam's temporary files last (an error names a final output when there is one)."""
    return sorted(paths, key=lambda p: ("/beam-temp-" in "/" + p.replace("\\", "/"), p))


def remove_outputs(prefix: str) -> list[str]:
    """Delete every output of this prefix (idempotent); returns what was removed."""
    paths = existing_outputs(prefix)
    if is_remote(prefix):
        if paths:
            from apache_beam.io.filesystems import FileSystems

            FileSystems.delete(paths)
        return paths
    for path in paths:
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
        except FileNotFoundError:
            pass
    return paths


class PrefixClaim:
    """This run's hold on its prefix: an exclusive flock on a lock file holding the run's token.

    The lock file lives outside the output directory (a per-user directory under the system's
    temporary directory, named by a hash of the prefix), so an input glob over the output directory
    never reads it. It excludes a second run of the same prefix started on this machine; runs on
    other machines writing one gs:// prefix are not excluded (object stores have no lock here).
    """

    def __init__(self, prefix: str, token: str, fd: int | None):
        self.prefix, self.token, self._fd = prefix, token, fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(lock_path(self.prefix))  # while holding it; a waiter re-checks the inode (_lock)
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None


def lock_path(prefix: str) -> str:
    """The lock file of a prefix: one per prefix (local paths through symbolic links), per user."""
    if is_remote(prefix):
        canonical = prefix
    else:
        directory, name = _split(prefix)
        canonical = os.path.join(os.path.realpath(directory or "."), name)
    digest = hashlib.sha256(canonical.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return os.path.join(tempfile.gettempdir(), f"dptext-{os.getuid()}", "locks", digest + LOCK_SUFFIX)


def claim(prefix: str, overwrite: bool, token: str | None = None) -> PrefixClaim:
    """Take the prefix for this run before the job starts: lock it, then refuse existing outputs,
    or delete them with --overwrite (so a failed run never leaves an old report looking current),
    then check that the job will be able to write there."""
    token = token or os.environ.get(RUN_TOKEN_ENV) or uuid.uuid4().hex
    held = _lock(prefix, token)
    try:
        existing = existing_outputs(prefix)
        if existing and not overwrite:
            more = f" and {len(existing) - 1} more of its outputs" if len(existing) > 1 else ""
            raise OptionsError(
                f"--output {prefix}: {existing[0]}{more} already exist; pass --overwrite to "
                "replace them, or choose another --output"
            )
        if existing:
            try:
                remove_outputs(prefix)
            except Exception as err:  # OSError locally, BeamIOError on a remote filesystem
                raise OptionsError(
                    f"--output {prefix}: --overwrite could not delete the earlier outputs "
                    f"({_first_line(err)}); remove them yourself or choose another --output"
                ) from None
        _probe(prefix)
    except BaseException:
        held.release()
        raise
    return held


def _probe(prefix: str) -> None:
    """Create and delete what Beam creates first, a temporary directory beside the outputs, so an
    output location nobody can write is a one-line error before the job (os.access is no answer
    for root, nor for gs://)."""
    directory, name = _split(prefix)
    probe_name = f"beam-temp-{name}-{uuid.uuid1().hex}"
    if is_remote(prefix):
        from apache_beam.io.filesystems import FileSystems

        probe = f"{directory}/{probe_name}/probe"
        try:
            with FileSystems.create(probe) as handle:
                handle.write(b"")
            FileSystems.delete([probe])
        except Exception as err:  # any filesystem's permission, bucket or network error
            raise OptionsError(
                f"--output {prefix}: cannot write in {directory} ({_first_line(err)}); choose a writable location"
            ) from None
        return
    where = directory or "."
    try:
        if directory:
            os.makedirs(directory, exist_ok=True)
        os.mkdir(os.path.join(directory, probe_name))
        os.rmdir(os.path.join(directory, probe_name))
    except OSError as err:
        if err.filename and not os.path.basename(err.filename).startswith("beam-temp-"):
            where = err.filename  # a directory on the way that could not be created
        raise OptionsError(
            f"--output {prefix}: cannot write in {where} ({err.strerror or err}); choose a writable location"
        ) from None


def _lock(prefix: str, token: str) -> PrefixClaim:
    lock = lock_path(prefix)
    os.makedirs(os.path.dirname(lock), mode=0o700, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES):
                raise OptionsError(
                    f"--output {prefix}: another dptext run is writing to this prefix (it holds "
                    f"the lock {lock}); wait for it to finish, or choose another --output"
                ) from None
            raise
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a file its previous holder unlinked while we waited
            os.ftruncate(fd, 0)
            os.write(fd, f"{token}\n{prefix}\n".encode("utf-8", "surrogateescape"))
            return PrefixClaim(prefix, token, fd)
        os.close(fd)


def cleanup_after_stop(prefix: str, token: str) -> bool:
    """After the job process of `dptext run` was stopped: if it had claimed the prefix (the lock
    holds its token and nobody holds the lock now), remove its outputs and the lock; True if so."""
    try:
        fd = os.open(lock_path(prefix), os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False  # another run holds it now: its outputs are not ours to touch
    if os.read(fd, 256).decode(errors="replace").split("\n", 1)[0] != token:
        os.close(fd)
        return False
    remove_outputs(prefix)
    PrefixClaim(prefix, token, fd).release()
    return True


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
