"""The reference profile of a model version, written beside its SavedModel at export:
`assets.extra/moat_profile.json` (+ `moat_profile_embeddings.npy`). TF Serving ignores both files.

It holds what every detector compares a window against, computed on the dev split through the exported
graph itself (so tokenization and outputs are the served ones): input histograms (length, OOV against the
training vocabulary, language, empty/garbage), predicted-class counts and top-class confidences, a sample of the
model's sentence embeddings with the kernel bandwidth, and a calibration for label-free accuracy estimates.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from moatkit.serving.errors import ServingConfigError
from moatkit.serving.monitoring import calibration, detectors
from moatkit.serving.monitoring.model_runner import VersionModel
from moatkit.serving.monitoring.text_stats import TextFeatures, language, language_categories, length_edges, words

PROFILE_FILE = "assets.extra/moat_profile.json"
EMBEDDINGS_FILE = "assets.extra/moat_profile_embeddings.npy"
FORMAT = "moatkit-monitoring-profile/1"
MAX_VOCABULARY = 50_000


def build_profile(version_dir: str | Path, texts: list[str], labels: list[str] | None, *,
                  vocabulary_texts: list[str] | None = None, embedding_sample: int = 1000, seed: int = 0,
                  source: str = "") -> dict:
    """Writes the profile into `version_dir` and returns it. `labels`: the dev labels (names) of a classifier."""
    if len(texts) < 50:
        raise ServingConfigError(f"a reference profile needs at least 50 dev texts, got {len(texts)}",
                                 fix="pass a larger dev split")
    model = VersionModel(version_dir)
    version_dir = Path(version_dir)
    counted: dict[str, int] = {}
    for text in vocabulary_texts or texts:
        for word in words(text):
            counted[word] = counted.get(word, 0) + 1
    vocabulary = sorted(counted, key=lambda w: (-counted[w], w))[:MAX_VOCABULARY]
    features = TextFeatures(vocabulary=set(vocabulary), length_edges=length_edges([len(words(t)) for t in texts]),
                            languages=language_categories([language(t) for t in texts]))
    values = features.features(texts)
    profile = {"format": FORMAT, "created": time.time(), "source": source, "texts": len(texts),
               "inputs": {"vocabulary": vocabulary, "length_edges": features.length_edges,
                          "languages": features.languages,
                          "histograms": {k: v.tolist() for k, v in features.histograms(values).items()}}}
    if model.is_classifier:
        profile.update(_prediction_section(model, texts, labels))
    else:
        profile["predictions"] = {"task": "regression", "scores": model.scores(texts).round(5).tolist()}
    if model.has_embeddings:
        rng = np.random.default_rng(seed)
        sample = sorted(rng.choice(len(texts), min(embedding_sample, len(texts)), replace=False))
        embeddings = model.embeddings([texts[i] for i in sample])
        (version_dir / EMBEDDINGS_FILE).parent.mkdir(parents=True, exist_ok=True)
        np.save(version_dir / EMBEDDINGS_FILE, embeddings)
        profile["embeddings"] = {"file": EMBEDDINGS_FILE, "count": len(sample), "dim": int(embeddings.shape[1]),
                                 "bandwidth": detectors.median_bandwidth(embeddings, seed=seed)}
    path = version_dir / PROFILE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(profile))
    return profile


def _prediction_section(model: VersionModel, texts: list[str], labels: list[str] | None) -> dict:
    label_names = _label_names(model)
    probabilities = model.probabilities(texts)
    section = {"labels": label_names, "predictions": {
        "task": "classification",
        "class_counts": np.bincount(probabilities.argmax(1), minlength=len(label_names)).tolist(),
        "confidences": probabilities.max(1).round(5).tolist()}}
    if labels is not None:
        index = {name: i for i, name in enumerate(label_names)}
        unknown = sorted({str(label) for label in labels} - set(index))
        if unknown:
            raise ServingConfigError(f"dev labels {unknown[:5]} are not among the model's labels {label_names}",
                                     fix="build the profile from the split the model was trained on")
        section["calibration"] = calibration.fit(probabilities, np.array([index[str(v)] for v in labels]))
    return section


def _label_names(model: VersionModel) -> list[str]:
    """The label order of `probabilities`: the `classes` row the classify signature returns for any example."""
    import tensorflow as tf

    if "classify" not in model.signatures:
        raise ServingConfigError(f"'{model.version_dir}' has no classify signature to read the label names from",
                                 fix="export the model with `moat export`")
    example = tf.train.Example(features=tf.train.Features(feature={
        "text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"x"]))}))
    classes = model.signatures["classify"](inputs=tf.constant([example.SerializeToString()]))["classes"]
    return [c.decode() for c in classes.numpy()[0]]


def read_profile(version_dir: str | Path, *, embeddings: bool = True) -> dict:
    path = Path(version_dir) / PROFILE_FILE
    if not path.is_file():
        raise ServingConfigError(f"model version '{version_dir}' has no reference profile ({PROFILE_FILE})",
                                 fix="write one with `moat monitor profile --set version=N --set data=<dev split>`")
    profile = json.loads(path.read_text())
    if profile.get("format") != FORMAT:
        raise ServingConfigError(f"'{path}' is not a {FORMAT} file", fix="write it again with `moat monitor profile`")
    if embeddings and "embeddings" in profile:
        profile["embeddings"]["values"] = np.load(Path(version_dir) / profile["embeddings"]["file"])
    return profile


def features_of(profile: dict) -> TextFeatures:
    inputs = profile["inputs"]
    return TextFeatures(vocabulary=set(inputs["vocabulary"]), length_edges=inputs["length_edges"],
                        languages=inputs["languages"])
