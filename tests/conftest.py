"""Shared fixtures. Real catalog data and weights are cached in $MOAT_HOME (default ~/.cache/moatkit).

Expensive artifacts are built once per session and shared; tests that change one work on a copy in tmp_path:
- `budget_demo`: `moat demo` on a budget; its real MiniLM fine-tune is `small_run` (the model the export, serving
  and monitoring tests use) and its export `small_export` (read-only: serve it, load it, never write to it);
- `tiny_bert_dir`: a tiny BERT classifier checkpoint (2 layers, hidden 32, MiniLM's vocab) for tests whose subject
  is the training machinery rather than what a model learns (sweeps, strategies, precision, resume), and
  `tiny_run`, that checkpoint fine-tuned on MR: the baseline of the compression tests and notebook 06."""

import json
from pathlib import Path

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
def budget_demo(tmp_path_factory, minilm_dir, mr_dir):
    """`moat demo` on a budget, run once: a real MiniLM fine-tune (480 MR train sentences, 2 epochs at 3e-4;
    measured 0.79 test accuracy on 400, both demo sentences at p > 0.9), exported with its monitoring profile,
    served and queried over REST and gRPC. tests/integration/test_demo.py checks it; its fine-tune and export are
    `small_run` and `small_export`.
    Returns {"summary": run_demo's summary, "lines": what it logged, "root": the dir with runs/ and models/}."""
    from moatkit.app.pipeline import DemoConfig, run_demo
    from moatkit.models.finetune import FinetuneConfig

    root = tmp_path_factory.mktemp("demo")
    lines = []
    config = DemoConfig(
        finetune=FinetuneConfig(run_dir=str(root / "runs" / "sentiment"), max_train_examples=480,
                                max_eval_examples=400, epochs=2, max_length=48, learning_rate=3e-4, log_every=5),
        repo=str(root / "models"), latency_requests=10, min_test_accuracy=0.0)  # the demo test checks the floor
    summary = run_demo(config, log=lines.append)
    return {"summary": summary, "lines": lines, "root": root}


@pytest.fixture(scope="session")
def small_run(budget_demo):
    """The budget demo's fine-tune report (runs/sentiment/report.json): the model the export, serving and
    monitoring tests use. Read-only: a test that changes the run works on a copy."""
    return json.loads((budget_demo["root"] / "runs" / "sentiment" / "report.json").read_text())


@pytest.fixture(scope="session")
def small_export(budget_demo):
    """The budget demo's export of `small_run` (<repo>/sentiment/1, raw strings in, with its monitoring profile):
    {"version_dir", "version"}. Read-only: serve it, load it, copy it; never write into it."""
    version_dir = Path(budget_demo["summary"]["model_version_dir"])
    return {"version_dir": str(version_dir), "version": int(version_dir.name)}


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


@pytest.fixture(scope="session")
def support_build(tmp_path_factory, minilm_dir):
    """`moat support build` on the Python FAQ on a budget: encoder max_length 128, the router 2 epochs at 48 tokens,
    100 + 200 out-of-scope texts per source. Read-only: {"out", "repo", "report"}; serve it, never write into it."""
    from moatkit.app.support.build import build_support
    from moatkit.app.support.config import RouterConfig, SupportConfig

    root = tmp_path_factory.mktemp("support")
    config = SupportConfig(out=str(root / "out"), repo=str(root / "models"), encoder_max_length=128,
                           router=RouterConfig(epochs=2, max_length=48, learning_rate=2e-4),
                           out_of_scope_dev=100, out_of_scope_test=200)
    lines = []
    report = build_support(config, log=lines.append)
    return {"out": Path(config.out), "repo": Path(config.repo), "report": report, "config": config, "lines": lines}


@pytest.fixture(scope="session")
def opinion_adapt(tmp_path_factory, small_export):
    """`moat opinion adapt` on a budget: the demo's MR model (`small_export`) as the general model, 800 BBC business
    sentences weakly labelled, the MiniLM finance model trained 3 epochs at 32 tokens (≈ 40 s), scored on 150 gold
    dev + 300 gold test NYT sentences. Read-only: {"out", "repo", "report", "config", "lines"}."""
    from moatkit.app.opinion.adapt import adapt
    from moatkit.app.opinion.config import AdaptConfig

    root = tmp_path_factory.mktemp("opinion")
    config = AdaptConfig(max_unlabelled=800, epochs=3, max_length=32, gold_dev=150, max_gold_test=300,
                         learning_rate=1e-4)
    lines = []
    report = adapt(config, out=root / "out", repo=str(root / "models"), general_model=small_export["version_dir"],
                   log=lines.append)
    return {"out": root / "out", "repo": root / "models", "report": report, "config": config, "lines": lines}


# TensorFlow Serving's own test file (tests/third_party/) runs in a process of its own with its own environment
# (tests/conformance/test_tf_serving_suite.py), never as part of this collection.
collect_ignore = ["third_party"]
