"""Shared fixtures. Real catalog data and weights are cached in $MOAT_HOME (default ~/.cache/moatkit)."""

import pytest


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
    """A real MiniLM fine-tune on a budget (1,000 MR train sentences, 2 epochs): the model the export and
    serving tests use."""
    from moatkit.models.finetune import FinetuneConfig, finetune

    run_dir = tmp_path_factory.mktemp("run") / "sentiment"
    config = FinetuneConfig(run_dir=str(run_dir), max_train_examples=1000, max_eval_examples=400, epochs=2, learning_rate=1e-4,
                            max_length=48, log_every=5)
    return finetune(config, verbose=0)


# TensorFlow Serving's own test file (tests/third_party/) runs in a process of its own with its own environment
# (tests/conformance/test_tf_serving_suite.py), never as part of this collection.
collect_ignore = ["third_party"]
