"""`make engines`: resolve the pinned job servers with mvn, check every jar's sha256, write launchers.

    python -m dptext.pipeline.engines.install [flink] [spark]

Idempotent: an engine whose jars all match the lock and whose launcher exists is left alone.
Maven Central is reached through `mvn` only; nothing is downloaded by hand.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Optional

from dptext.pipeline.engines.catalog import BEAM_VERSION, ENGINES, Engine
from dptext.transforms.errors import DptextError

# Packages Spark and Flink reflect into on Java 17 (Spark's own JavaModuleOptions list); a jar
# run with `java -jar` opens them through its manifest, other JVMs through --add-opens flags.
OPENED_PACKAGES = (
    "java.base/java.lang",
    "java.base/java.lang.invoke",
    "java.base/java.lang.reflect",
    "java.base/java.io",
    "java.base/java.net",
    "java.base/java.nio",
    "java.base/java.text",
    "java.base/java.time",
    "java.base/java.util",
    "java.base/java.util.concurrent",
    "java.base/java.util.concurrent.atomic",
    "java.base/jdk.internal.ref",
    "java.base/sun.nio.ch",
    "java.base/sun.nio.cs",
    "java.base/sun.security.action",
    "java.base/sun.util.calendar",
)


def java_open_flags() -> list[str]:
    return [f"--add-opens={p}=ALL-UNNAMED" for p in OPENED_PACKAGES]


class EngineInstallError(DptextError):
    pass


def read_lock(engine: Engine) -> dict[str, str]:
    """file name -> sha256, from the engine's committed lock."""
    entries = {}
    for line in engine.lock.read_text().splitlines():
        if line.strip():
            digest, name = line.split()
            entries[name] = digest
    return entries


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(engine: Engine, lib: Path) -> list[str]:
    """Problems with the jars in lib (missing, extra, or a different sha256); [] when all match."""
    expected = read_lock(engine)
    present = {p.name for p in lib.glob("*.jar")} if lib.is_dir() else set()
    problems = [f"missing {name}" for name in sorted(set(expected) - present)]
    problems += [f"not in the lock: {name}" for name in sorted(present - set(expected))]
    for name in sorted(set(expected) & present):
        if sha256(lib / name) != expected[name]:
            problems.append(f"sha256 of {name} differs from {engine.lock.name}")
    return problems


def installed(engine: Engine, cache: Optional[Path] = None) -> bool:
    return engine.launcher(cache).is_file() and not verify(engine, engine.lib(cache))


def install(engine: Engine, cache: Optional[Path] = None, log=print) -> Path:
    """Resolve, verify and place the engine's jars; return its launcher jar."""
    if installed(engine, cache):
        log(f"{engine.label} (Beam {BEAM_VERSION}): already installed")
        return engine.launcher(cache)
    if shutil.which("mvn") is None:
        raise EngineInstallError("make engines needs Maven (`mvn`) on PATH to fetch the job-server jars")
    home = engine.home(cache)
    home.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=home, prefix=".download-") as tmp:
        staging = Path(tmp) / "lib"
        command = [
            "mvn",
            "-q",
            "-B",
            "-f",
            str(engine.pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
            "-DincludeScope=runtime",
        ]
        log(f"{engine.label}: resolving {engine.pom.relative_to(engine.pom.parents[2])} with mvn")
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            raise EngineInstallError(f"mvn could not resolve {engine.pom}:\n{tail}")
        problems = verify(engine, staging)
        if problems:
            raise EngineInstallError(
                f"{engine.label}: the jars mvn resolved do not match {engine.lock}: " + "; ".join(problems[:5])
            )
        if engine.lib(cache).exists():
            shutil.rmtree(engine.lib(cache))
        staging.rename(engine.lib(cache))
    write_launcher(engine, cache)
    log(f"{engine.label}: {len(read_lock(engine))} jars verified, job server {engine.launcher(cache)}")
    return engine.launcher(cache)


def write_launcher(engine: Engine, cache: Optional[Path] = None) -> Path:
    """A jar holding only a manifest: Main-Class, a Class-Path of lib/*.jar, and Add-Opens."""
    jars = sorted(p.name for p in engine.lib(cache).glob("*.jar"))
    manifest = (
        "Manifest-Version: 1.0\r\n"
        + _header("Main-Class", engine.driver_class)
        + _header("Class-Path", " ".join(f"lib/{name}" for name in jars))
        + _header("Add-Opens", " ".join(OPENED_PACKAGES))
        + "Created-By: dptext make engines\r\n\r\n"
    )
    target = engine.launcher(cache)
    partial = target.with_suffix(".jar.partial")
    with zipfile.ZipFile(partial, "w") as jar:
        jar.writestr("META-INF/MANIFEST.MF", manifest)
    partial.replace(target)
    return target


def _header(name: str, value: str) -> str:
    """A manifest header wrapped at 72 bytes, continuation lines starting with one space."""
    line = f"{name}: {value}".encode()
    chunks = [line[:72]] + [b" " + line[i : i + 71] for i in range(72, len(line), 71)]
    return "".join(chunk.decode() + "\r\n" for chunk in chunks)


def main(argv=None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or list(ENGINES)
    unknown = [n for n in names if n not in ENGINES]
    if unknown:
        print(f"dptext engines: unknown engine {unknown[0]!r}; valid: {', '.join(ENGINES)}", file=sys.stderr)
        return 2
    try:
        for name in names:
            install(ENGINES[name])
    except DptextError as e:
        print(f"dptext engines: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
