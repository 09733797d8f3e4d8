"""The compression tests run on a tiny real baseline: `tiny_run` (tests/conftest.py), a BERT classifier (2 layers,
hidden 32, MiniLM's 30,522-word vocab) fine-tuned with models.finetune on 1,600 MR sentences (~0.70 test accuracy on
200), so every method runs on a real model in seconds. Its layers are random-init; the word embeddings are MiniLM's
projected onto their first 32 principal components: from a fully random init the same budget stays at the majority
class (measured)."""

import dataclasses

import pytest

TINY_TRAIN, TINY_EVAL, TINY_LENGTH = 1600, 200, 32  # tiny_run's budget (tests/conftest.py)


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
