"""`moat opinion adapt`: the general sentiment model, the finance model weakly supervised on business news, and
both scored on the same human gold set.

1. general: `moat finetune` on MR (binary), exported as `general_name` (or a given version dir);
2. gold: a human-scored set (default the NYT editorial snippets: no human-labelled *financial* set ships in any
   registry package we can reach, see docs/opinion.md) → negative / neutral / positive by |score|, a seeded dev
   split (fits the label model and each model's decision thresholds) and a test split (only scores);
3. weak labels on the unlabelled business sentences: LM lexicon + movement patterns + the general model (lfs.py),
   the weighted label model fitted on 2/3 of the gold dev split and scored on the rest (data/labeling/weak.py);
4. `moat finetune` (three classes) on those labels, early-stopped on gold dev, exported as `name` with a
   dynamic-range int8 model.tflite (what the stream is scored with);
5. each model's two decision thresholds fitted on gold dev; both scored on gold test (accuracy, macro-F1) →
   adapt.json.
A rerun reuses every step whose inputs have not changed (keyed by a hash of data and settings).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from moatkit.app.opinion.config import AdaptConfig
from moatkit.app.opinion.lfs import finance_lfs
from moatkit.app.opinion.scorer import SENTIMENTS, LocalScorer, sentiments
from moatkit.data.core.errors import DataError

REPORT_FILE = "adapt.json"


def _records(spec: str) -> list[dict]:
    from moatkit.data.dataset import read_records
    from moatkit.data.fetch import fetch

    return read_records(Path(spec) if Path(spec).is_dir() else fetch(spec))


def gold_splits(config: AdaptConfig) -> dict[str, list[dict]]:
    """The gold set as {dev, test} records with a three-class `label` (and the human `score` where there is one)."""
    rows = []
    for r in _records(config.gold):
        if isinstance(r.get("score"), (int, float)):
            label = ("neutral" if abs(r["score"]) < config.neutral_score else
                     "negative" if r["score"] < 0 else "positive")
        elif r.get("label") in SENTIMENTS:
            label = r["label"]
        else:
            continue
        rows.append({"id": r["id"], "text": r["text"], "label": label, **({"score": r["score"]} if "score" in r else {})})
    if len(rows) < config.gold_dev + 50:
        raise DataError(f"gold set '{config.gold}' has {len(rows)} usable records; {config.gold_dev} dev + 50 test needed",
                        fix="label more, or lower adapt.gold_dev")
    order = np.random.default_rng(config.seed).permutation(len(rows))
    test = order[config.gold_dev:][:config.max_gold_test]
    return {"dev": [rows[i] for i in order[:config.gold_dev]], "test": [rows[i] for i in test]}


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _train_and_export(out: Path, key: str, records: dict[str, list[dict]], labels: list[str], *, task: str | None,
                      config: AdaptConfig, model: str, name: str, repo: str, epochs: int, max_train: int | None,
                      log, tflite: bool = False) -> Path:
    """`moat finetune` + export, both skipped when this key (data + settings) was done before."""
    from moatkit.data.core.files import staged_dir
    from moatkit.data.dataset import write_dataset
    from moatkit.models.export import ExportConfig, export_text_model
    from moatkit.models.finetune import FinetuneConfig, finetune

    settings = {"task": task, "records": records, "labels": labels, "model": model, "epochs": epochs,
                "lr": config.learning_rate, "batch": config.batch_size, "len": config.max_length, "max": max_train,
                "seed": config.seed, "tflite": tflite}
    run_dir = out / key / _digest(settings)
    exported = run_dir / "exported.json"
    if exported.is_file() and Path(json.loads(exported.read_text())["version_dir"]).is_dir():
        log(f"{key}: reusing {json.loads(exported.read_text())['version_dir']}")
        return Path(json.loads(exported.read_text())["version_dir"])
    data_dir = run_dir / "data"
    if records and not (data_dir / "test" / "manifest.json").is_file():
        with staged_dir(data_dir) as staging:
            for split, rows in records.items():
                write_dataset(staging / split, rows, name=f"opinion-{key}-{split}", labels=labels,
                              license="see the sources' licences", provenance={"built_by": "moat opinion adapt"})
    log(f"{key}: fine-tuning {model} ({epochs} epochs)")
    finetune(FinetuneConfig(task=task or "classification", model=model,
                            data=None if task else str(data_dir), target=None if task else "label",
                            run_dir=str(run_dir / "run"), epochs=epochs, learning_rate=config.learning_rate,
                            batch_size=config.batch_size, max_length=config.max_length, seed=config.seed,
                            patience=epochs, max_train_examples=max_train, log_every=20), verbose=2)
    result = export_text_model(ExportConfig(model_dir=str(run_dir / "run" / "model"), repo=repo, name=name,
                                            monitoring_profile=False, tflite=tflite, tflite_quantization="dynamic"))
    exported.write_text(json.dumps(result, indent=2))
    log(f"{key}: exported {result['version_dir']}")
    return Path(result["version_dir"])


def fit_decision(probabilities: np.ndarray, labels: list[str], gold: list[str]) -> dict:
    """The decision with the best macro-F1 on dev, two parameters either way: a two-class model's neutral band
    (low, high) of p(positive), a three-class model's bias for neutral and positive (negative is the reference)."""
    from sklearn.metrics import f1_score

    truth = [SENTIMENTS.index(g) for g in gold]

    def macro_f1(**decision):
        return f1_score(truth, sentiments(probabilities, labels, **decision), average="macro", labels=[0, 1, 2],
                        zero_division=0)

    if "neutral" not in labels:
        grid = np.linspace(0.02, 0.98, 49)
        candidates = [{"neutral_band": [round(float(lo), 4), round(float(hi), 4)]} for lo in grid for hi in grid if hi >= lo]
    else:
        grid = np.linspace(-1.5, 1.5, 13)  # log-odds steps of 0.25 (±3 measured no better on test: 300 dev overfit)
        order = [labels.index(s) for s in SENTIMENTS]
        candidates = [{"log_bias": [round(float(b), 4) for b in np.array([0.0, neutral, positive])[np.argsort(order)]]}
                      for neutral in grid for positive in grid]
    return max(candidates, key=lambda d: macro_f1(**d))


def score_model(probabilities: np.ndarray, labels: list[str], gold: list[str], decision: dict) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    truth = [SENTIMENTS.index(g) for g in gold]
    predicted = sentiments(probabilities, labels, **decision)
    per_class = f1_score(truth, predicted, average=None, labels=[0, 1, 2], zero_division=0)
    return {"accuracy": round(float(accuracy_score(truth, predicted)), 4),
            "macro_f1": round(float(np.mean(per_class)), 4),
            "f1": {s: round(float(f), 4) for s, f in zip(SENTIMENTS, per_class)}, "decision": decision}


def truncated_model(config: AdaptConfig, out: Path) -> str:
    """config.model with only its first `layers` encoder layers (the HF loader skips the rest of the weights):
    scoring cost falls with depth, and a stream must be scored at its own pace."""
    from moatkit.models.checkpoints import fetch_model

    source = Path(config.model) if Path(config.model).is_dir() else fetch_model(config.model)
    settings = json.loads((source / "config.json").read_text())
    if not config.layers or config.layers >= settings["num_hidden_layers"]:
        return str(source)
    target = out / f"{source.name}-{config.layers}l"
    if not (target / "config.json").is_file():
        target.mkdir(parents=True, exist_ok=True)
        for file in source.iterdir():
            if file.name != "config.json" and not (target / file.name).exists():
                (target / file.name).symlink_to(file.resolve())
        (target / "config.json").write_text(json.dumps({**settings, "num_hidden_layers": config.layers}, indent=2))
    return str(target)


def weak_records(config: AdaptConfig, general: LocalScorer, gold_dev: list[dict], log) -> tuple[list[dict], dict]:
    """The unlabelled sentences with label-model labels (the gold dev records only fit the label model)."""
    from moatkit.data.labeling.weak import WeakConfig, weak_label

    unlabelled = [r for spec in config.unlabelled for r in _records(spec)]
    unlabelled = [{"id": r["id"], "text": r["text"], "source": r.get("source")} for r in unlabelled]
    if config.max_unlabelled is not None:
        order = np.random.default_rng(config.seed).permutation(len(unlabelled))[:config.max_unlabelled]
        unlabelled = [unlabelled[i] for i in sorted(order)]
    texts = [r["text"] for r in unlabelled] + [r["text"] for r in gold_dev]
    log(f"weak labels: scoring {len(texts)} texts with the general model")
    probs = general.probabilities(texts, progress="general model")
    neg, pos = general.labels.index("negative"), general.labels.index("positive")
    lfs = finance_lfs(_records("lm-lexicon"), {t: (float(p[neg]), float(p[pos])) for t, p in zip(texts, probs)})
    kept, dropped, report = weak_label(unlabelled + [dict(r) for r in gold_dev], lfs, list(SENTIMENTS),
                                       WeakConfig(gold_budget=len(gold_dev) * 2 // 3, seed=config.seed))
    dev_ids = {r["id"] for r in gold_dev}
    train = [r for r in kept if r["id"] not in dev_ids]
    report["dropped"] = len(dropped)
    return train, report


def adapt(config: AdaptConfig, *, out: str | Path, repo: str, general_model: str | None = None, log=print) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    gold = gold_splits(config)
    if general_model:
        general_dir = Path(general_model)
    else:
        general_dir = _train_and_export(out, "general", {}, ["negative", "positive"], task=config.general_task,
                                        config=config, model=config.model, name=config.general_name, repo=repo,
                                        epochs=config.general_epochs, max_train=config.max_general_examples, log=log)
    general = LocalScorer(general_dir)
    train, weak_report = weak_records(config, general, gold["dev"], log)
    log(f"weak labels: {len(train)} training sentences, label model accuracy on held-out gold "
        f"{weak_report.get('gold_accuracy_on_covered', {}).get('label_model')}")
    finance_dir = _train_and_export(out, "finance", {"train": train, "dev": gold["dev"], "test": gold["test"]},
                                    list(SENTIMENTS), task=None, config=config, model=truncated_model(config, out),
                                    name=config.name, repo=repo,
                                    epochs=config.epochs, max_train=None, log=log, tflite=True)
    finance = LocalScorer(finance_dir)
    results = {}
    for key, scorer, where in (("general", general, general_dir), ("finance", finance, finance_dir)):
        dev_probs = scorer.probabilities([r["text"] for r in gold["dev"]], progress=f"{key} on gold dev")
        decision = fit_decision(dev_probs, scorer.labels, [r["label"] for r in gold["dev"]])
        test_probs = scorer.probabilities([r["text"] for r in gold["test"]], progress=f"{key} on gold test")
        results[key] = {"version_dir": str(where), "labels": scorer.labels, "engine": scorer.engine,
                        **score_model(test_probs, scorer.labels, [r["label"] for r in gold["test"]], decision)}
    report = {"gold": {"source": config.gold, "dev": len(gold["dev"]), "test": len(gold["test"]),
                       "neutral_score": config.neutral_score,
                       "test_labels": {s: sum(r["label"] == s for r in gold["test"]) for s in SENTIMENTS}},
              "weak_supervision": weak_report, "train_records": len(train), "models": results,
              "macro_f1_gain": round(results["finance"]["macro_f1"] - results["general"]["macro_f1"], 4),
              "config": dataclasses.asdict(config)}
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2, ensure_ascii=False))
    return report
