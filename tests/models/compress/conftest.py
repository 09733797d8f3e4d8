"""A tiny real baseline for every compression test: a BERT classifier (2 layers, hidden 32, MiniLM's 30,522-word
vocab) fine-tuned with models.finetune on 1,600 MR sentences (~0.70 test accuracy on 200), so every method runs on
a real model in seconds. Its layers are random-init; the word embeddings are MiniLM's projected onto their first
32 principal components: from a fully random init the same budget stays at the majority class (measured)."""

import dataclasses

import pytest

TINY_TRAIN, TINY_EVAL, TINY_LENGTH = 1600, 200, 32


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, minilm_dir, mr_dir):
    """The run dir of `moat finetune` on the tiny model: run/model is the baseline, run/report.json its data."""
    import h5py
    import numpy as np
    import tensorflow as tf
    from transformers import BertConfig, BertTokenizerFast, TFBertForSequenceClassification

    from moatkit.models.finetune import FinetuneConfig, finetune

    root = tmp_path_factory.mktemp("tiny_bert")
    init = root / "init"
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
    run = root / "run"
    finetune(FinetuneConfig(model=str(init), run_dir=str(run), max_train_examples=TINY_TRAIN,
                            max_eval_examples=TINY_EVAL, max_length=TINY_LENGTH, epochs=5, learning_rate=1e-3,
                            batch_size=16, patience=5, log_every=100), verbose=0)
    return run


@pytest.fixture
def tiny_config(tiny_run, tmp_path):
    """A CompressConfig on the tiny baseline with small budgets; tests replace fields with dataclasses.replace."""
    from moatkit.models.compress.base import CompressConfig

    def make(**overrides):
        config = CompressConfig(model_dir=str(tiny_run / "model"), max_train_examples=TINY_TRAIN,
                                max_eval_examples=TINY_EVAL, out_dir=str(tmp_path / "compress"),
                                repo=str(tmp_path / "repo"), name="tiny", latency_repeats=20, throughput_batches=3,
                                warmup_calls=3)
        return dataclasses.replace(config, **overrides)

    return make


@pytest.fixture(scope="session")
def tiny_context(tiny_run, tmp_path_factory):
    """One loaded context shared by the method tests (each writes under its own method dir)."""
    from moatkit.models.compress.base import CompressConfig, load_context

    out = tmp_path_factory.mktemp("compress_shared")
    return load_context(CompressConfig(model_dir=str(tiny_run / "model"), max_train_examples=TINY_TRAIN,
                                       max_eval_examples=TINY_EVAL, out_dir=str(out / "out"),
                                       repo=str(out / "repo"), name="tiny", latency_repeats=20,
                                       throughput_batches=3, warmup_calls=3))


@pytest.fixture(scope="module")
def context(tiny_context):
    """The shared tiny context with its first 400 training sentences: 13 steps an epoch keep each run in seconds."""
    keep = slice(0, 400)
    return dataclasses.replace(
        tiny_context, texts={**tiny_context.texts, "train": tiny_context.texts["train"][keep]},
        arrays={**tiny_context.arrays, "train": {k: v[keep] for k, v in tiny_context.arrays["train"].items()}},
        targets={**tiny_context.targets, "train": tiny_context.targets["train"][keep]})
