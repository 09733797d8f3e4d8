"""The training-run state both trainers share: config fingerprint, state file, AdamW's weight-decay exclusions."""
import dataclasses

import pytest

from moatkit.data.core.errors import ConfigError
from moatkit.models.training import adamw, config_fingerprint, prepare_checkpoint_dir, read_state, write_state


@dataclasses.dataclass
class _Config:
    learning_rate: float = 1e-4
    log_every: int = 10


def test_fingerprint_ignores_only_the_named_keys():
    base = config_fingerprint(_Config(), ignore=("log_every",))
    assert config_fingerprint(_Config(log_every=99), ignore=("log_every",)) == base
    assert config_fingerprint(_Config(learning_rate=3e-5), ignore=("log_every",)) != base
    assert config_fingerprint(_Config(log_every=99)) != config_fingerprint(_Config())
    assert len(base) == 16


def test_state_round_trips_and_refuses_another_runs_checkpoints(tmp_path):
    assert read_state(tmp_path, fingerprint="abc") is None
    write_state(tmp_path, {"step": 5, "history": [{"loss": 1.0}]}, fingerprint="abc")
    assert read_state(tmp_path, fingerprint="abc") == {"fingerprint": "abc", "step": 5, "history": [{"loss": 1.0}]}
    assert not (tmp_path / "state.json.tmp").exists()
    with pytest.raises(ConfigError, match="different config"):
        read_state(tmp_path, fingerprint="other")


def test_a_fresh_run_empties_the_checkpoint_dir_and_a_resumed_one_keeps_it(tmp_path):
    directory = tmp_path / "checkpoints"
    prepare_checkpoint_dir(directory, resume=True)
    (directory / "ckpt-1.index").write_text("")
    prepare_checkpoint_dir(directory, resume=True)
    assert (directory / "ckpt-1.index").exists()
    prepare_checkpoint_dir(directory, resume=False)
    assert directory.is_dir() and not any(directory.iterdir())


def test_adamw_decays_kernels_and_embeddings_but_not_layer_norms_or_biases():
    import tensorflow as tf

    decayed = ["bert/encoder/layer_._0/attention/self/query/kernel", "bert/embeddings/word_embeddings/weight",
               "bert/transformer/layer_0/self_attention/query/kernel", "bert/transformer/embedding/token/embeddings"]
    kept = ["bert/embeddings/LayerNorm/gamma", "bert/encoder/layer_._0/output/LayerNorm/beta",  # Hugging Face
            "bert/encoder/layer_._0/output/dense/bias", "bert/transformer/embedding/norm/gamma",  # moatkit
            "bert/transformer/layer_0/feed_forward_norm/beta", "bert_pretrainer/mlm_head/bias"]
    optimizer = adamw(learning_rate=1e-3, weight_decay=0.01, epsilon=1e-6)
    assert isinstance(optimizer, tf.keras.optimizers.AdamW)
    uses_decay = {name: optimizer._use_weight_decay(tf.Variable(0.0, name=name)) for name in decayed + kept}
    assert uses_decay == {**{name: True for name in decayed}, **{name: False for name in kept}}
