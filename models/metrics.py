"""Evaluation metrics computed in numpy from model outputs (so they work for any model that yields logits)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE over equal-width confidence bins (Guo et al. 2017): Σ_b |B|/n · |accuracy(B) − confidence(B)|."""
    confidence = probs.max(-1)
    correct = probs.argmax(-1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def classification_metrics(logits: np.ndarray, labels: np.ndarray, label_names: list[str], *,
                           brief: bool = False) -> dict:
    probs = softmax(logits.astype(np.float64))
    predicted = probs.argmax(-1)
    n = len(label_names)
    confusion = np.zeros((n, n), np.int64)  # rows: true label, columns: predicted
    np.add.at(confusion, (labels, predicted), 1)
    picked = np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)
    result = {"examples": int(len(labels)), "accuracy": float((predicted == labels).mean()),
              "loss": float(-np.log(picked).mean())}
    precision = np.diag(confusion) / np.maximum(confusion.sum(0), 1)
    recall = np.diag(confusion) / np.maximum(confusion.sum(1), 1)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    present = confusion.sum(1) > 0  # macro-F1 over the classes that occur in this split
    result["macro_f1"] = float(f1[present].mean())
    result["score"] = result["accuracy"]  # the model-selection metric
    if brief:
        return result
    result["ece"] = expected_calibration_error(probs, labels)
    result["per_class"] = {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                                  "support": int(confusion[i].sum())} for i, name in enumerate(label_names)}
    result["confusion_matrix"] = {"labels": label_names, "rows_true_cols_predicted": confusion.tolist()}
    return result


def regression_metrics(predictions: np.ndarray, targets: np.ndarray, *, brief: bool = False) -> dict:
    from scipy import stats

    predictions, targets = predictions.astype(np.float64).ravel(), targets.astype(np.float64).ravel()
    constant = np.ptp(predictions) == 0 or np.ptp(targets) == 0
    pearson = 0.0 if constant else float(stats.pearsonr(predictions, targets)[0])
    result = {"examples": int(len(targets)), "loss": float(((predictions - targets) ** 2).mean()),
              "pearson": pearson, "score": pearson}
    if brief:
        return result
    result["spearman"] = 0.0 if constant else float(stats.spearmanr(predictions, targets)[0])
    result["mae"] = float(np.abs(predictions - targets).mean())
    result["rmse"] = float(np.sqrt(result["loss"]))
    return result


def confusion_image(confusion: np.ndarray, cell: int = 24) -> np.ndarray:
    """Row-normalised confusion matrix as an RGB heat map (1, H, W, 3) uint8 for tf.summary.image.

    Drawn with numpy (white → dark blue, one square per cell, grid lines) to avoid a plotting dependency."""
    confusion = np.asarray(confusion, np.float64)
    rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    white, blue = np.array([255, 255, 255.0]), np.array([8, 48, 107.0])
    colors = white + rates[..., None] * (blue - white)  # (n, n, 3)
    image = np.repeat(np.repeat(colors, cell, 0), cell, 1)
    image[::cell, :, :] = 128
    image[:, ::cell, :] = 128
    return image.astype(np.uint8)[None]


def write_predictions(path: Path, texts: list[str], outputs: np.ndarray, targets: np.ndarray,
                      label_names: list[str] | None) -> None:
    """One JSON line per example, for error analysis."""
    with open(path, "w", encoding="utf-8") as handle:
        if label_names is None:
            for text, predicted, target in zip(texts, outputs.ravel(), targets.ravel()):
                handle.write(json.dumps({"text": text, "score": float(target), "predicted": round(float(predicted), 6)},
                                        ensure_ascii=False) + "\n")
            return
        probs = softmax(outputs.astype(np.float64))
        for text, p, y in zip(texts, probs, targets):
            handle.write(json.dumps({"text": text, "label": label_names[y], "predicted": label_names[int(p.argmax())],
                                     "probabilities": [round(float(v), 6) for v in p]}, ensure_ascii=False) + "\n")
