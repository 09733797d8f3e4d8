"""Shared fixtures. Real catalog data and weights are cached in $MOAT_HOME (default ~/.cache/moatkit).

Expensive artifacts are built once per session and shared; tests that change one work on a copy in tmp_path:
- `small_run`: a real MiniLM fine-tune on a budget (the model the export, serving and CLI tests use), and
  `small_export`, its SavedModel export in a model repository (read-only: serve it, load it, never write to it);
- `tiny_bert_dir`: a tiny BERT classifier checkpoint (2 layers, hidden 32, MiniLM's vocab) for tests whose subject
  is the training machinery rather than what a model learns (sweeps, strategies, precision, resume), and
  `tiny_run`, that checkpoint fine-tuned on MR: the baseline of the compression tests and notebook 06."""

import pytest

# the tiny baseline's budget (tests/models/compress/conftest.py builds its contexts with the same numbers)
TINY_TRAIN, TINY_EVAL, TINY_LENGTH = 1600, 200, 32


@pytest.fixture(scope="session")
def minilm_dir():
    from moatkit.models.checkpoints import fetch_model
    return fetch_model("minilm-l6")


@pytest.fixture(scope="session")
def mr_dir():
    from moatkit.data.fetch import fetch
    return fetch("mr")


@pytest.fixture(scope="session")
def small_run(tmp_path_factory, minilm_dir, mr_dir):
    """A real MiniLM fine-tune on a budget (480 MR train sentences, 2 epochs at 3e-4; measured 0.77 test accuracy
    on 400, the dev/test sentences are predicted confidently): the model the export and serving tests use."""
    from moatkit.models.finetune import FinetuneConfig, finetune

    run_dir = tmp_path_factory.mktemp("run") / "sentiment"
    config = FinetuneConfig(run_dir=str(run_dir), max_train_examples=480, max_eval_examples=400, epochs=2,
                            learning_rate=3e-4, max_length=48, log_every=5)
    return finetune(config, verbose=0)


@pytest.fixture(scope="session")
def small_export(small_run, tmp_path_factory):
    """`small_run` exported once to <repo>/sentiment/1 (raw strings in): shared read-only by the export and
    `moat serve` tests."""
    from moatkit.models.export import ExportConfig, export_text_model

    repo = tmp_path_factory.mktemp("small_repo")
    return export_text_model(ExportConfig(model_dir=small_run["saved_model_dir"], repo=str(repo), name="sentiment"))


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, minilm_dir):
    """An HF BERT classifier dir (2 labels) that fine-tunes in seconds: 2 layers, hidden 32, MiniLM's 30,522-word
    vocab and tokenizer. Its layers are random-init; the word embeddings are MiniLM's projected onto their first 32
    principal components: from a fully random init a small budget stays at the majority class (measured)."""
    import h5py
    import numpy as np
    import tensorflow as tf
    from transformers import BertConfig, BertTokenizerFast, TFBertForSequenceClassification

    init = tmp_path_factory.mktemp("tiny_bert") / "init"
    tf.keras.utils.set_random_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=2)
    model = TFBertForSequenceClassification(config)
    model(model.dummy_inputs)
    with h5py.File(minilm_dir / "tf_model.h5", "r") as weights:
        words = weights["bert/tf_bert_model/bert/embeddings/word_embeddings/weight:0"][...]  # (30522, 384)
    words = words - words.mean(0)
    projected = words @ np.linalg.svd(words, full_matrices=False)[2][:32].T  # (30522, 32)
    model.bert.embeddings.weight.assign(projected / projected.std() * 0.05)
    model.save_pretrained(init)
    BertTokenizerFast.from_pretrained(minilm_dir).save_pretrained(init)
    return init


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_bert_dir, mr_dir):
    """The run dir of `moat finetune` on the tiny model (1,600 MR sentences, 5 epochs at 1e-3; ~0.70 test accuracy
    on 200): run/model is the baseline, run/report.json its data."""
    from moatkit.models.finetune import FinetuneConfig, finetune

    run = tmp_path_factory.mktemp("tiny_bert_run") / "run"
    finetune(FinetuneConfig(model=str(tiny_bert_dir), run_dir=str(run), max_train_examples=TINY_TRAIN,
                            max_eval_examples=TINY_EVAL, max_length=TINY_LENGTH, epochs=5, learning_rate=1e-3,
                            batch_size=16, patience=5, log_every=100), verbose=0)
    return run


# TensorFlow Serving's own test file (tests/third_party/) runs in a process of its own with its own environment
# (tests/conformance/test_tf_serving_suite.py), never as part of this collection.
collect_ignore = ["third_party"]
