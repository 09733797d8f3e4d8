"""Classification metrics computed in numpy from logits (so they work for any model that yields logits)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


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
    result["macro_f1"] = float(f1.mean())
    if brief:
        return result
    result["per_class"] = {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                                  "support": int(confusion[i].sum())} for i, name in enumerate(label_names)}
    result["confusion_matrix"] = {"labels": label_names, "rows_true_cols_predicted": confusion.tolist()}
    return result


def write_predictions(path: Path, texts: list[str], logits: np.ndarray, labels: np.ndarray,
                      label_names: list[str]) -> None:
    probs = softmax(logits.astype(np.float64))
    with open(path, "w") as handle:
        for text, p, y in zip(texts, probs, labels):
            handle.write(json.dumps({"text": text, "label": label_names[y], "predicted": label_names[int(p.argmax())],
                                     "probabilities": [round(float(v), 6) for v in p]}) + "\n")
