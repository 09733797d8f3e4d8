"""Label-free accuracy estimates from a classifier's probabilities, calibrated on the dev split.

- Temperature scaling (Guo et al. 2017) fitted on dev: softmax(log p / T) (log p equals the logits up to a
  constant per row, so the logged probabilities suffice).
- CBPE-style estimate: the expected accuracy of a window is the mean calibrated confidence (NannyML's
  confidence-based performance estimation), with a normal interval from the Poisson-binomial variance.
- ATC (average thresholded confidence, Garg et al. 2022): the share of a window above the confidence threshold
  at which dev's above-threshold share equals dev accuracy; more robust to the overconfidence that shifted text
  brings, and the default.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

Z95 = 1.959964


def _log(probabilities: np.ndarray) -> np.ndarray:
    return np.log(np.clip(probabilities, 1e-12, 1.0))


def scale(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    logits = _log(probabilities) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    def nll(t):
        return -np.mean(np.log(np.clip(scale(probabilities, t)[np.arange(len(labels)), labels], 1e-12, None)))
    return float(minimize_scalar(nll, bounds=(0.05, 20.0), method="bounded").x)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges) - 1, 0, bins - 1)
    return float(sum(abs(confidence[which == b].mean() - correct[which == b].mean()) * (which == b).mean()
                     for b in range(bins) if (which == b).any()))


def atc_threshold(confidence: np.ndarray, correct: np.ndarray) -> float:
    """t with mean(confidence > t) == mean(correct) on dev."""
    return float(np.quantile(confidence, 1.0 - correct.mean()))


def fit(probabilities: np.ndarray, labels: np.ndarray) -> dict:
    """The calibration section of a profile, from dev probabilities (n, labels) and integer labels (n,)."""
    temperature = fit_temperature(probabilities, labels)
    calibrated = scale(probabilities, temperature)
    raw_conf, conf = probabilities.max(axis=1), calibrated.max(axis=1)
    correct = (probabilities.argmax(axis=1) == labels).astype(np.float64)
    return {"method": "atc", "temperature": temperature, "atc_threshold": atc_threshold(conf, correct),
            "dev_accuracy": float(correct.mean()), "dev_mean_confidence": float(raw_conf.mean()),
            "dev_ece_raw": expected_calibration_error(raw_conf, correct),
            "dev_ece_calibrated": expected_calibration_error(conf, correct)}


def estimate(probabilities: np.ndarray, calibration: dict) -> dict:
    """Estimated accuracy of a window of probabilities (n, labels): ATC and CBPE, each with a 95 % interval."""
    n = len(probabilities)
    conf = scale(probabilities, calibration["temperature"]).max(axis=1)
    cbpe = float(conf.mean())
    cbpe_half = Z95 * float(np.sqrt(np.sum(conf * (1 - conf)))) / n
    atc = float(np.mean(conf > calibration["atc_threshold"]))
    atc_half = Z95 * float(np.sqrt(max(atc * (1 - atc), 1.0 / n) / n))
    chosen = atc if calibration.get("method", "atc") == "atc" else cbpe
    half = atc_half if calibration.get("method", "atc") == "atc" else cbpe_half
    return {"estimated_accuracy": chosen, "interval": [max(0.0, chosen - half), min(1.0, chosen + half)],
            "atc": atc, "cbpe": cbpe, "mean_confidence": float(probabilities.max(axis=1).mean())}
