"""One window of logged texts against the reference profile: every detector's test, the alarm decision and the
label-free accuracy estimate.

False alarms: each window runs k tests (up to 8); the window alarms when any p-value is below alpha / k
(Bonferroni), so a window of in-distribution traffic alarms with probability ≤ alpha whatever the detectors'
correlation. Over a stream of W evaluated windows the expected number of false alarms is ≤ alpha · W; with
`confirm` = 2 an alarm also needs the previous window to have failed (about alpha² per window for disjoint
windows, fewer alarms at the cost of one more step of delay).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from moatkit.serving.monitoring import calibration, detectors
from moatkit.serving.monitoring.profile import features_of


@dataclasses.dataclass
class Window:
    texts: list[str]
    probabilities: np.ndarray | None = None  # (n, labels) for classifiers
    scores: np.ndarray | None = None  # (n,) for regressors
    embeddings: np.ndarray | None = None  # (m, hidden), m ≤ n (a sample may be embedded)
    features: dict[str, np.ndarray] | None = None  # TextFeatures.features(texts), when already computed


class WindowEvaluator:
    def __init__(self, profile: dict, *, alpha: float = 0.01, permutations: int = 500, seed: int = 0,
                 reference_sample: int = 1000):
        self.profile, self.alpha, self.permutations, self.seed = profile, alpha, permutations, seed
        self.features = features_of(profile)
        self.reference_histograms = {k: np.asarray(v) for k, v in profile["inputs"]["histograms"].items()}
        predictions = profile.get("predictions", {})
        self.reference_confidences = np.asarray(predictions.get("confidences", []), np.float64)
        self.reference_classes = np.asarray(predictions.get("class_counts", []), np.float64)
        self.reference_scores = np.asarray(predictions.get("scores", []), np.float64)
        embeddings = profile.get("embeddings")
        self.reference_embeddings = embeddings["values"][:reference_sample] if embeddings else None
        self.bandwidth = embeddings["bandwidth"] if embeddings else None

    def tests(self, window: Window) -> dict[str, dict]:
        values = window.features if window.features is not None else self.features.features(window.texts)
        histograms = self.features.histograms(values)
        results = {f"input_{name}": detectors.chi_square(self.reference_histograms[name], counts)
                   for name, counts in histograms.items()}
        if window.probabilities is not None and len(window.probabilities) and len(self.reference_classes):
            classes = np.bincount(window.probabilities.argmax(1), minlength=len(self.reference_classes))
            results["prediction_class"] = detectors.chi_square(self.reference_classes, classes)
            results["prediction_confidence"] = detectors.kolmogorov_smirnov(self.reference_confidences,
                                                                           window.probabilities.max(1))
        if window.scores is not None and len(window.scores) and len(self.reference_scores):
            results["prediction_score"] = detectors.kolmogorov_smirnov(self.reference_scores, window.scores)
        if window.embeddings is not None and len(window.embeddings) >= 2 and self.reference_embeddings is not None:
            results["embedding_mmd"] = detectors.mmd(self.reference_embeddings, window.embeddings,
                                                     bandwidth=self.bandwidth, permutations=self.permutations,
                                                     seed=self.seed)
            results["embedding_classifier"] = detectors.domain_classifier(self.reference_embeddings,
                                                                          window.embeddings, seed=self.seed)
        return results

    def evaluate(self, window: Window) -> dict:
        tests = self.tests(window)
        level = self.alpha / max(1, len(tests))
        drifted = sorted(name for name, t in tests.items() if t["p_value"] < level)
        result = {"n": len(window.texts), "tests": tests, "level": level, "drifted": drifted,
                  "alarm": bool(drifted)}
        if window.probabilities is not None and len(window.probabilities) and "calibration" in self.profile:
            result["estimate"] = calibration.estimate(window.probabilities, self.profile["calibration"])
        return result
