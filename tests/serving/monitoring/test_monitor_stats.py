"""Detectors, calibration and feedback on synthetic data with known answers: false-alarm rates at alpha, power
against a known shift, a recovered temperature, and a feedback join that counts every row."""
import json

import numpy as np
import pytest

from moatkit.serving.errors import ServingConfigError
from moatkit.serving.monitoring import calibration, detectors
from moatkit.serving.monitoring.feedback import Feedback, text_key
from moatkit.serving.monitoring.text_stats import TextFeatures, is_garbage, language, length_edges


def test_chi_square_holds_alpha_on_the_same_distribution_and_flags_a_shift():
    rng = np.random.default_rng(0)
    shares = np.array([0.1, 0.2, 0.3, 0.4])
    reference = rng.multinomial(1000, shares)
    p_same = [detectors.chi_square(reference, rng.multinomial(200, shares))["p_value"] for _ in range(400)]
    assert np.mean(np.array(p_same) < 0.05) < 0.09  # ≈ 0.05 expected
    shifted = detectors.chi_square(reference, rng.multinomial(200, [0.4, 0.3, 0.2, 0.1]))
    assert shifted["p_value"] < 1e-6 and shifted["psi"] > 0.5 and 0 < shifted["js"] <= 1
    assert detectors.chi_square(reference, np.zeros(4))["p_value"] == 1.0  # an empty window tests nothing


def test_mmd_permutation_test_is_calibrated_and_sees_a_mean_shift():
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(300, 8))
    bandwidth = detectors.median_bandwidth(reference)
    p_same = [detectors.mmd(reference, rng.normal(size=(60, 8)), bandwidth=bandwidth, permutations=200,
                            seed=i)["p_value"] for i in range(60)]
    assert np.mean(np.array(p_same) < 0.1) <= 0.2  # ≈ 0.1 expected
    shifted = detectors.mmd(reference, rng.normal(0.5, 1.0, size=(60, 8)), bandwidth=bandwidth, permutations=200)
    assert shifted["p_value"] <= 1 / 201 + 1e-9  # the smallest p-value 200 permutations can give


def test_domain_classifier_holds_alpha_and_sees_a_partial_shift():
    rng = np.random.default_rng(4)
    reference = rng.normal(size=(500, 16))
    p_same = [detectors.domain_classifier(reference, rng.normal(size=(100, 16)), seed=i)["p_value"]
              for i in range(60)]
    assert np.mean(np.array(p_same) < 0.1) <= 0.2  # ≈ 0.1 expected
    shifted = np.concatenate([rng.normal(size=(70, 16)), rng.normal(1.0, 1.0, size=(30, 16))])  # 30 % moved
    result = detectors.domain_classifier(reference, shifted)
    assert result["p_value"] < 1e-3 and result["auc"] > 0.6


def test_ks_on_confidences():
    rng = np.random.default_rng(2)
    reference = rng.beta(8, 2, 1000)
    assert detectors.kolmogorov_smirnov(reference, rng.beta(8, 2, 200))["p_value"] > 0.001
    assert detectors.kolmogorov_smirnov(reference, rng.beta(4, 2, 200))["p_value"] < 1e-4


def _calibrated_sample(n, temperature, rng):
    """Binary classifier outputs whose true correctness probability is the temperature-scaled confidence."""
    logits = rng.normal(0, 3, size=n)
    true_p = 1 / (1 + np.exp(-logits / temperature))
    labels = (rng.random(n) < true_p).astype(int)
    overconfident = 1 / (1 + np.exp(-logits))
    return np.stack([1 - overconfident, overconfident], 1), labels


def test_temperature_is_recovered_and_estimates_track_accuracy():
    rng = np.random.default_rng(3)
    dev, dev_labels = _calibrated_sample(4000, 2.0, rng)
    fitted = calibration.fit(dev, dev_labels)
    assert fitted["temperature"] == pytest.approx(2.0, rel=0.15)
    assert fitted["dev_ece_calibrated"] < fitted["dev_ece_raw"]
    window, labels = _calibrated_sample(2000, 2.0, rng)
    accuracy = np.mean(window.argmax(1) == labels)
    estimate = calibration.estimate(window, fitted)
    assert abs(estimate["atc"] - accuracy) < 0.03 and abs(estimate["cbpe"] - accuracy) < 0.03
    low, high = estimate["interval"]
    assert low < estimate["estimated_accuracy"] < high and high - low < 0.06
    assert estimate["mean_confidence"] > accuracy + 0.03  # raw confidence overstates it


def test_text_features_and_histograms():
    assert language("The quick brown fox jumps over the lazy dog") == "en"
    assert language("Der schnelle braune Fuchs springt über den faulen Hund") == "de"
    assert is_garbage("") and is_garbage("<div>123</div> 0x45 %%") and not is_garbage("a fine film")
    features = TextFeatures(vocabulary={"a", "fine", "film"}, length_edges=length_edges([1, 2, 3, 4, 30] * 20),
                            languages=["en", "other"])
    values = features.features(["a fine film", "a superb film", ""])
    assert values["length"].tolist() == [3, 3, 0] and values["oov"].tolist() == [0.0, pytest.approx(1 / 3), 0.0]
    histograms = features.histograms(values)
    assert histograms["garbage"].tolist() == [2, 1] and histograms["length"].sum() == 3
    assert {k: len(v) for k, v in features.bin_names().items()} == {k: len(v) for k, v in histograms.items()}


def test_feedback_join_counts_every_row(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text("\n".join([json.dumps({"text": "A  Fine film ", "label": "positive"}),
                               json.dumps({"text": "dull", "label": "neutral"}),
                               json.dumps({"text": "", "label": "negative"}), "not json",
                               json.dumps({"text": "bad", "label": "negative"})]) + "\n")
    feedback = Feedback(path, ["negative", "positive"])
    assert feedback.label_of("a fine   FILM") == "positive" and feedback.label_of("bad") == "negative"
    assert dict(feedback.counts) == {"rows": 5, "used": 2, "skipped_unknown_label": 1,
                                     "skipped_missing_text_or_label": 1, "skipped_not_json": 1}
    assert feedback.unknown_labels == {"neutral"}
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("text,label\nbad,negative\n")
    assert Feedback(csv_path, ["negative", "positive"]).label_of("bad") == "negative"
    assert text_key("x  y") == text_key(" X y")
    (tmp_path / "labels.txt").write_text("bad\tnegative\n")
    with pytest.raises(ServingConfigError, match="neither"):
        Feedback(tmp_path / "labels.txt", ["negative"])
    with pytest.raises(ServingConfigError, match="does not exist"):
        Feedback(tmp_path / "missing.jsonl", ["negative"])
