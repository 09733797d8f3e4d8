"""Weak supervision: user labelling functions → label matrix → a Dawid–Skene label model → probabilistic labels.

A labelling function (LF) is a Python callable `text -> label name | ABSTAIN`, marked with `@labeling_function()`.
Users keep them in a .py file; `load_lfs(path)` imports it and collects its LFs in definition order.

The label model is hand-written numpy EM rather than Snorkel's LabelModel because snorkel requires torch, which
this TensorFlow toolkit does not install. It is Dawid & Skene (1979) with ABSTAIN as an observed output: each LF
has a confusion matrix P(output | true class) over the labels plus "abstain". Modelling abstention matters for
the usual one-label LFs ("who …" → HUM): conditioned on firing such an LF always says HUM, so only how often it
fires per class makes it informative.

Unsupervised Dawid–Skene assumes the LFs are conditionally independent. Real LFs share cues ("who" starts both the
question-word and the phrase LF), so on TREC it loses to majority vote. The default label model therefore uses a
small gold dev set (`gold_budget` records that already carry a label, e.g. from `moat data label merge`): each LF's
accuracy where it fires gives it a log-odds weight, log(acc·(k−1)/(1−acc)), the optimal weighted vote for
symmetric LF errors. Dependencies then only cost what they cost majority vote, while noisy LFs stop outvoting
precise ones. Its accuracy is always reported on gold-labelled records outside the dev set.
"""
from __future__ import annotations

import collections
import dataclasses
import importlib.util
import json
from pathlib import Path
from typing import Callable, Literal

import numpy as np

from moatkit.data.core.errors import ConfigError, DataError

ABSTAIN = None


@dataclasses.dataclass(frozen=True)
class LabelingFunction:
    name: str
    fn: Callable[[str], str | None]

    def __call__(self, text: str) -> str | None:
        return self.fn(text)


def labeling_function(name: str | None = None):
    """Decorator: `@labeling_function()` turns `def lf(text): ...` into a named LabelingFunction."""
    def wrap(fn):
        return LabelingFunction(name=name or fn.__name__, fn=fn)
    return wrap


def load_lfs(path: str | Path) -> list[LabelingFunction]:
    """Imports a user .py file and returns the LabelingFunctions defined at its top level, in order."""
    path = Path(path)
    if not path.is_file() or path.suffix != ".py":
        raise ConfigError(f"labelling-function file '{path}' is not an existing .py file",
                          fix="pass a Python file that defines functions decorated with @labeling_function()")
    spec = importlib.util.spec_from_file_location(f"moat_user_lfs_{abs(hash(str(path.resolve())))}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # the user's code: report where it failed, not our traceback
        raise ConfigError(f"importing labelling functions from '{path}' failed: {err.__class__.__name__}: {err}",
                          fix="run `python FILE` to see the full error") from None
    lfs = [v for v in vars(module).values() if isinstance(v, LabelingFunction)]
    if not lfs:
        raise ConfigError(f"'{path}' defines no labelling functions",
                          fix="decorate each function with @labeling_function() from moatkit.data.labeling.weak")
    names = [lf.name for lf in lfs]
    duplicated = sorted(n for n, c in collections.Counter(names).items() if c > 1)
    if duplicated:
        raise ConfigError(f"'{path}' has several labelling functions named {duplicated}", fix="give each a unique name")
    return lfs


def apply_lfs(records: list[dict], lfs: list[LabelingFunction], labels: list[str]) -> np.ndarray:
    """The label matrix L (n_records, n_lfs): label index, or -1 where the LF abstained."""
    index = {label: i for i, label in enumerate(labels)}
    matrix = np.full((len(records), len(lfs)), -1, dtype=np.int64)
    for j, lf in enumerate(lfs):
        for i, record in enumerate(records):
            try:
                out = lf(record["text"])
            except Exception as err:
                raise DataError(f"labelling function '{lf.name}' raised {err.__class__.__name__}: {err} on record "
                                f"{record.get('id')!r}", fix="make the function return ABSTAIN for inputs it cannot handle") from None
            if out is ABSTAIN:
                continue
            if out not in index:
                raise DataError(f"labelling function '{lf.name}' returned {out!r} for record {record.get('id')!r}, "
                                f"which is not one of the labels {labels}", fix="return a label name or ABSTAIN")
            matrix[i, j] = index[out]
    return matrix


def lf_summary(matrix: np.ndarray, lfs: list[LabelingFunction], labels: list[str],
               gold: np.ndarray | None = None) -> list[dict]:
    """Per LF: coverage, overlap (fires with another LF), conflict (another LF disagrees), and, given gold
    labels (index per row, -1 unknown), the accuracy where it fired."""
    fired = matrix >= 0
    n = max(len(matrix), 1)
    rows = []
    for j, lf in enumerate(lfs):
        mine = fired[:, j]
        others = np.delete(fired, j, axis=1)
        other_votes = np.delete(matrix, j, axis=1)
        overlap = mine & others.any(axis=1)
        conflict = mine & ((other_votes >= 0) & (other_votes != matrix[:, [j]])).any(axis=1)
        row = {"name": lf.name, "labels": sorted({labels[v] for v in matrix[mine, j]}),
               "coverage": round(float(mine.mean()) if len(matrix) else 0.0, 4),
               "overlap": round(float(overlap.sum() / n), 4), "conflict": round(float(conflict.sum() / n), 4)}
        if gold is not None:
            judged = mine & (gold >= 0)
            row["accuracy"] = round(float((matrix[judged, j] == gold[judged]).mean()), 4) if judged.any() else None
        rows.append(row)
    return rows


def majority_vote(matrix: np.ndarray, n_labels: int, *, seed: int = 0) -> np.ndarray:
    """Plain majority vote: label index per row, ties broken at random (seeded), -1 where every LF abstained."""
    rng = np.random.default_rng(seed)
    counts = _vote_counts(matrix, n_labels)
    out = np.full(len(matrix), -1, dtype=np.int64)
    for i, row in enumerate(counts):
        if row.sum() > 0:
            out[i] = rng.choice(np.flatnonzero(row == row.max()))
    return out


def _vote_counts(matrix: np.ndarray, n_labels: int) -> np.ndarray:
    counts = np.zeros((len(matrix), n_labels))
    for j in range(matrix.shape[1]):
        votes = matrix[:, j]
        hit = votes >= 0
        counts[np.flatnonzero(hit), votes[hit]] += 1
    return counts


class DawidSkene:
    """EM for class priors and per-LF confusion matrices P(output | class), outputs = labels + abstain."""

    def __init__(self, *, n_labels: int, max_iter: int = 200, tol: float = 1e-6, smoothing: float = 0.1):
        self.n_labels, self.max_iter, self.tol, self.smoothing = n_labels, max_iter, tol, smoothing

    def _outputs(self, matrix: np.ndarray) -> np.ndarray:
        return np.where(matrix >= 0, matrix, self.n_labels)  # abstain is output index n_labels

    def fit(self, matrix: np.ndarray) -> "DawidSkene":
        outputs = self._outputs(matrix)
        n, m = outputs.shape
        k = self.n_labels
        # Start from the majority-vote posterior, which fixes the label permutation EM converges to.
        counts = _vote_counts(matrix, k) + 1e-3
        posterior = counts / counts.sum(axis=1, keepdims=True)
        onehot = np.zeros((n, m, k + 1))
        onehot[np.arange(n)[:, None], np.arange(m)[None, :], outputs] = 1.0
        previous = -np.inf
        for iteration in range(1, self.max_iter + 1):
            self.prior = (posterior.sum(axis=0) + 1.0) / (n + k)  # (k,)
            joint = np.einsum("ic,ijo->jco", posterior, onehot) + self.smoothing  # (m, k, k+1)
            self.confusion = joint / joint.sum(axis=2, keepdims=True)
            log_post = self._log_joint(onehot)
            norm = np.logaddexp.reduce(log_post, axis=1)
            posterior = np.exp(log_post - norm[:, None])
            likelihood = float(norm.mean())
            self.iterations = iteration
            if likelihood - previous < self.tol:
                break
            previous = likelihood
        self.log_likelihood = likelihood
        return self

    def _log_joint(self, onehot: np.ndarray) -> np.ndarray:
        return np.log(self.prior)[None, :] + np.einsum("ijo,jco->ic", onehot, np.log(self.confusion))

    def predict_proba(self, matrix: np.ndarray) -> np.ndarray:
        outputs = self._outputs(matrix)
        n, m = outputs.shape
        onehot = np.zeros((n, m, self.n_labels + 1))
        onehot[np.arange(n)[:, None], np.arange(m)[None, :], outputs] = 1.0
        log_post = self._log_joint(onehot)
        return np.exp(log_post - np.logaddexp.reduce(log_post, axis=1)[:, None])


class WeightedVote:
    """Vote weighted by each LF's log-odds accuracy, measured on gold-labelled rows where the LF fired.

    Laplace smoothing (acc = (right + 1) / (fired + 2)) keeps an LF that never fired on the dev set at weight
    log(k−1) (a coin among k labels), and caps perfect LFs at a finite weight.
    """

    def __init__(self, *, n_labels: int):
        self.n_labels = n_labels

    def fit(self, matrix: np.ndarray, gold: np.ndarray) -> "WeightedVote":
        known = gold >= 0
        if not known.any():
            raise DataError("the weighted label model needs gold-labelled records and got none",
                            fix="label a few hundred records (moat data label select/merge) or use --set model=majority")
        fired = (matrix[known] >= 0)
        right = (matrix[known] == gold[known, None]) & fired
        self.accuracy = (right.sum(axis=0) + 1.0) / (fired.sum(axis=0) + 2.0)  # (m,)
        self.dev_fired = fired.sum(axis=0)
        k = self.n_labels
        self.weights = np.log(self.accuracy * (k - 1) / (1.0 - self.accuracy))
        return self

    def predict_proba(self, matrix: np.ndarray) -> np.ndarray:
        scores = np.zeros((len(matrix), self.n_labels))
        for j, weight in enumerate(self.weights):
            hit = matrix[:, j] >= 0
            scores[np.flatnonzero(hit), matrix[hit, j]] += weight
        scores -= scores.max(axis=1, keepdims=True)
        probs = np.exp(scores)
        return probs / probs.sum(axis=1, keepdims=True)


@dataclasses.dataclass
class WeakConfig:
    lf_file: str = ""                  # .py file with @labeling_function()s
    labels: list[str] | None = None    # default: the dataset manifest's labels
    # weighted: log-odds vote fitted on gold_budget gold-labelled records; dawid-skene: unsupervised EM (no gold;
    # measured worse than majority on TREC, see the module doc); majority: plain vote. (EM with the gold records
    # clamped was tried: 200 clamped rows do not move 5,000 free ones, it scored like plain Dawid–Skene.)
    model: Literal["weighted", "dawid-skene", "majority"] = "weighted"
    gold_budget: int = 200             # gold-labelled records (seeded sample) used to fit the label model; the
                                       # other gold-labelled records score it
    max_iter: int = 200
    smoothing: float = 0.1
    uncovered: Literal["drop", "keep"] = "drop"  # records no LF labelled: drop (reported) or keep unlabelled
    min_confidence: float = 0.0        # drop records whose top probability is below this
    gold_field: str = "label"          # an existing label, kept in meta.gold and used to score the label model
    seed: int = 0

    def validate(self):
        if not 0 <= self.min_confidence <= 1:
            raise ConfigError(f"min_confidence={self.min_confidence} must be in [0, 1]", fix="e.g. --set min_confidence=0.6")
        if self.gold_budget < 0:
            raise ConfigError(f"gold_budget={self.gold_budget} must be >= 0", fix="e.g. --set gold_budget=200")
        if self.model == "weighted" and self.gold_budget == 0:
            raise ConfigError(f"model={self.model} needs gold-labelled records but gold_budget=0",
                              fix="set gold_budget (e.g. 200) or use --set model=dawid-skene / majority")


def weak_label(records: list[dict], lfs: list[LabelingFunction], labels: list[str], config: WeakConfig):
    """Returns (kept records with label + meta.label_probs, dropped [{id, reason}], report).

    With a gold-fitted model, `gold_budget` of the gold-labelled records (seeded sample) form the dev set: they
    keep their gold label (meta.label_source = "gold-dev"); every other covered record gets the model's label.
    """
    config.validate()
    matrix = apply_lfs(records, lfs, labels)
    index = {label: i for i, label in enumerate(labels)}
    gold = np.array([index.get(r.get(config.gold_field), -1) for r in records], dtype=np.int64)
    covered = (matrix >= 0).any(axis=1)
    dev = np.zeros(len(records), dtype=bool)
    if config.model == "weighted":
        with_gold = np.flatnonzero(gold >= 0)
        if len(with_gold) < config.gold_budget:
            raise DataError(f"model={config.model} with gold_budget={config.gold_budget} needs that many records with "
                            f"a '{config.gold_field}' label; the dataset has {len(with_gold)}",
                            fix="annotate more (moat data label select / merge), lower gold_budget, or use "
                                "--set model=majority")
        dev[np.random.default_rng(config.seed).permutation(with_gold)[:config.gold_budget]] = True
    dev_gold = np.where(dev, gold, -1)
    mv = majority_vote(matrix, len(labels), seed=config.seed)
    model = None
    if config.model == "weighted":
        model = WeightedVote(n_labels=len(labels)).fit(matrix, dev_gold)
        probs = model.predict_proba(matrix)
    elif config.model == "dawid-skene":
        model = DawidSkene(n_labels=len(labels), max_iter=config.max_iter, smoothing=config.smoothing).fit(matrix)
        probs = model.predict_proba(matrix)
    else:
        counts = _vote_counts(matrix, len(labels))
        probs = np.where(covered[:, None], counts / np.maximum(counts.sum(1, keepdims=True), 1), 1 / len(labels))
    # Ties (equal vote weight) break like majority vote, at random (seeded), not towards the first label.
    tie_noise = np.random.default_rng(config.seed).random(probs.shape) * 1e-9
    predicted = (probs + tie_noise).argmax(axis=1)
    kept, dropped = [], []
    for i, record in enumerate(records):
        meta = dict(record.get("meta") or {})
        if gold[i] >= 0:
            meta["gold"] = labels[gold[i]]
        if covered[i]:
            meta["label_probs"] = {label: round(float(p), 4) for label, p in zip(labels, probs[i])}
            meta["lf_votes"] = {lf.name: labels[v] for lf, v in zip(lfs, matrix[i]) if v >= 0}
        if dev[i]:
            out = dict(record, label=labels[gold[i]])
            meta["label_source"] = "gold-dev"
        elif not covered[i]:
            if config.uncovered == "drop":
                dropped.append({"id": record["id"], "reason": "no-lf-fired"})
                continue
            out = {k: v for k, v in record.items() if k != config.gold_field}
        elif probs[i].max() < config.min_confidence:
            dropped.append({"id": record["id"], "reason": "low-label-model-confidence",
                            "confidence": round(float(probs[i].max()), 4)})
            continue
        else:
            out = dict(record, label=labels[predicted[i]])
            meta["label_source"] = "label-model"
        out["meta"] = meta
        kept.append(out)
    has_gold = bool((gold >= 0).any())
    report = {"records": len(records), "covered": int(covered.sum()),
              "coverage": round(float(covered.mean()), 4) if len(records) else 0.0,
              "label_model": config.model, "gold_dev_records": int(dev.sum()),
              "lfs": lf_summary(matrix, lfs, labels, gold if has_gold else None),
              "predicted_by_label": dict(collections.Counter(labels[p] for p in predicted[covered & ~dev]))}
    if isinstance(model, WeightedVote):
        for row, accuracy, weight, fired in zip(report["lfs"], model.accuracy, model.weights, model.dev_fired):
            row.update(dev_accuracy=round(float(accuracy), 4), weight=round(float(weight), 4), dev_fired=int(fired))
    if isinstance(model, DawidSkene):
        report["em_iterations"] = model.iterations
        report["class_prior"] = {label: round(float(p), 4) for label, p in zip(labels, model.prior)}
    held_out = (gold >= 0) & ~dev
    if held_out.any():
        judged = covered & held_out
        report["gold_accuracy_on_covered"] = {  # held-out gold records only: the dev set never scores the model
            "label_model": round(float((predicted[judged] == gold[judged]).mean()), 4) if judged.any() else None,
            "majority_vote": round(float((mv[judged] == gold[judged]).mean()), 4) if judged.any() else None,
            "records": int(judged.sum()), "held_out_uncovered": int((held_out & ~covered).sum())}
    return kept, dropped, report


def run_weak(data_dir: str | Path, out_dir: str | Path, config: WeakConfig) -> dict:
    """`moat data label weak`: applies the LFs in config.lf_file to a dataset dir and writes a labelled one."""
    from moatkit.data.dataset import read_manifest, read_records, write_dataset

    if not config.lf_file:
        raise ConfigError("no labelling-function file given", fix="pass --lfs FILE.py (or --set lf_file=FILE.py)")
    lfs = load_lfs(config.lf_file)
    manifest = read_manifest(data_dir)
    labels = config.labels or manifest.get("labels")
    if not labels:
        raise ConfigError(f"dataset '{data_dir}' lists no labels", fix="pass them with --set labels=[A,B,C]")
    records = read_records(data_dir)
    kept, dropped, report = weak_label(records, lfs, list(labels), config)
    write_dataset(out_dir, kept, name=f"{manifest['name']}-weak", labels=list(labels), dropped=dropped,
                  license=manifest.get("license", "unknown"),
                  provenance={"weak_labels_of": str(Path(data_dir).resolve()), "lf_file": str(Path(config.lf_file).resolve()),
                              "config": dataclasses.asdict(config), "source": manifest.get("provenance")})
    _merge_report(out_dir, "weak_supervision", report)
    return report


def _merge_report(out_dir: str | Path, key: str, section: dict) -> None:
    path = Path(out_dir) / "report.json"
    report = json.loads(path.read_text(encoding="utf-8"))
    report[key] = section
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
