"""Distillation on the tiny fine-tuned BERT (2 layers): the student's shape and init, and that training moves it
towards the teacher."""

import json
import math

import numpy as np
import pytest

from moatkit.data.core.errors import ConfigError
from moatkit.models.compress.base import DistillSettings


def test_student_layer_map_keeps_the_last_layer():
    from moatkit.models.compress.distill import student_layer_map

    assert student_layer_map(6, 3) == [1, 3, 5]
    assert student_layer_map(6, 2) == [2, 5]
    assert student_layer_map(12, 4) == [2, 5, 8, 11]
    assert student_layer_map(2, 1) == [1]
    with pytest.raises(ConfigError, match="student_layers"):
        student_layer_map(6, 7)


def test_student_has_requested_layers_and_copies_teacher_weights(tiny_context):
    from moatkit.models.compress.distill import build_student

    teacher = tiny_context.load_baseline()
    student, mapping = build_student(teacher, layers=1)
    assert mapping == [1]
    assert student.config.num_hidden_layers == 1 and len(student.bert.encoder.layer) == 1
    for ours, theirs in ((student.bert.encoder.layer[0], teacher.bert.encoder.layer[1]),
                         (student.bert.embeddings, teacher.bert.embeddings), (student.bert.pooler, teacher.bert.pooler),
                         (student.classifier, teacher.classifier)):
        assert len(ours.weights) == len(theirs.weights) > 0
        for a, b in zip(ours.get_weights(), theirs.get_weights()):
            np.testing.assert_array_equal(a, b)
    smaller, mapping = build_student(teacher, layers=1, hidden=16)
    assert mapping is None and smaller.config.hidden_size == 16
    with pytest.raises(ConfigError, match="student_hidden"):
        build_student(teacher, layers=1, hidden=15)


def test_distillation_loss_matches_its_definition():
    from moatkit.models.compress.distill import DistillationLoss, UNLABELED

    teacher = np.array([[2.0, -1.0], [0.5, 0.0]], np.float32)
    student = np.array([[0.0, 1.0], [1.0, -1.0]], np.float32)
    labels = np.array([[0.0], [float(UNLABELED)]], np.float32)
    loss = DistillationLoss(temperature=2.0, alpha=0.25, reduction="none")
    got = loss(np.concatenate([labels, teacher], axis=1), student).numpy()

    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    p, q = softmax(teacher / 2), softmax(student / 2)
    kl = (p * np.log(p / q)).sum(-1) * 4
    ce = -np.log(softmax(student)[0, 0])
    np.testing.assert_allclose(got, [0.25 * kl[0] + 0.75 * ce, 0.25 * kl[1]], rtol=1e-5)


def test_distillation_lowers_kl_to_the_teacher(tiny_context):
    from moatkit.models.compress import distill

    baseline = tiny_context.load_baseline()
    teacher = distill.build_student(baseline, layers=2)[0]  # a copy we may change
    for weight in teacher.classifier.weights:  # a more confident teacher: the tiny baseline's logits x 5
        weight.assign(weight * 5.0)
    student, _ = distill.build_student(baseline, layers=1)  # starts as the unsharpened baseline's last layer
    train = {name: values[:320] for name, values in tiny_context.arrays["train"].items()}  # 10 steps an epoch
    dev = tiny_context.arrays["dev"]
    dev_teacher = distill.predict_logits(teacher, dev)

    def kl():
        return float(np.mean(distill.kl_divergence(dev_teacher, distill.predict_logits(student, dev))))

    before = kl()
    steps = distill.distill(student, arrays=train, labels=tiny_context.targets["train"][:320],
                            teacher_logits=distill.predict_logits(teacher, train),
                            settings=DistillSettings(epochs=3, learning_rate=1e-3, alpha=0.9))
    assert steps == 30
    after = kl()
    assert after < 0.75 * before  # measured 0.180 → 0.108 nats on held-out dev sentences


def test_compress_exports_the_student_and_filters_unlabeled_text(tiny_context, tmp_path):
    from moatkit.data.dataset import write_dataset
    from moatkit.models.compress import distill

    # extra text: 2 sentences of the test split (must be dropped), 1 of train, 3 new ones (one twice)
    test, train = tiny_context.texts["test"], tiny_context.texts["train"]
    fresh = ["a slow, lovely film about nothing much", "the plot collapses by the second act",
             "an actor at the top of his game"]
    texts = [test[0], test[1].upper(), train[0], *fresh, fresh[0]]
    write_dataset(tmp_path / "extra", [{"id": str(i), "text": t} for i, t in enumerate(texts)], name="extra",
                  provenance={}, license="test")
    settings = DistillSettings(student_layers=1, epochs=1, unlabeled=str(tmp_path / "extra"))
    [variant] = distill.compress(tiny_context, settings)
    notes = variant.notes
    assert notes["unlabeled"] == {"source": str(tmp_path / "extra"), "records": 7, "without_text": 0,
                                  "in_dev_or_test": 2, "in_train": 1, "duplicates": 1, "used": 3}
    assert notes["steps"] == math.ceil((len(tiny_context.targets["train"]) + 3) / 32)  # one epoch, + unlabeled
    assert notes["initialised_from_teacher_layers"] == [1]
    assert np.isfinite(notes["dev_kl_to_teacher_before"]) and np.isfinite(notes["dev_kl_to_teacher_after"])
    assert variant.name == "distill-1l" and variant.model.config.num_hidden_layers == 1
    assert variant.params < tiny_context.load_baseline().count_params()
    # a normal HF dir: serving/export.py loads it as it loads a fine-tuned model
    from moatkit.models.export import load_text_model

    model, vocab, task = load_text_model(variant.hf_dir)
    assert model.config.num_hidden_layers == 1 and task["labels"] == tiny_context.labels
    assert json.loads((variant.hf_dir / "moat_task.json").read_text())["max_length"] == tiny_context.max_length
