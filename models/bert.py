"""BERT (Devlin et al. 2019): encoder + pooler, a tied masked-LM head and a 2-way sentence head, and HF interop.

The encoder is our `models.transformer.Encoder` in its BERT shape (learned positions, token types, embedding
LayerNorm, post-norm GELU blocks) plus BERT's tanh pooler over the first token. `BertPretrainer` takes the feature
dict of `data.pretraining.pretraining_dataset` and returns float32 logits for the masked positions only (the
gather happens before the vocabulary projection, as in Google's BERT) and for NSP / sentence order.

Checkpoints: `load_hf_pretrained` reads an HF BERT dir (config.json + model.safetensors or tf_model.h5, read with
safetensors.numpy / h5py: no torch, no HF model built); `save_hf_pretrained` writes a dir that
`TFBertForPreTraining` / `TFBertForSequenceClassification.from_pretrained` load (HF's own writer does the h5).
Shapes: B batch, T sequence, P masked positions, H hidden, V vocabulary.
"""
from __future__ import annotations


import dataclasses
import json
import shutil
from pathlib import Path
from typing import Literal

import numpy as np
import tensorflow as tf

from moatkit.data.core.errors import ConfigError, ModelError
from moatkit.models.layers.feed_forward import get_activation
from moatkit.models.checkpoints import (bert_weight_targets, encoder_kwargs_from_bert_config, load_bert_weights,
                                        read_hf_state)
from moatkit.models.transformer import Encoder

SENTENCE_HEADS = ("nsp", "sop", "none")
ARCHITECTURE_KEYS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                     "max_position_embeddings", "type_vocab_size", "hidden_act", "layer_norm_eps", "sentence_head")
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

# our field → HF BertConfig attribute
_HF_NAMES = {"vocab_size": "vocab_size", "hidden_size": "hidden_size", "num_layers": "num_hidden_layers",
             "num_heads": "num_attention_heads", "intermediate_size": "intermediate_size",
             "max_position_embeddings": "max_position_embeddings", "type_vocab_size": "type_vocab_size",
             "hidden_act": "hidden_act", "dropout": "hidden_dropout_prob",
             "attention_dropout": "attention_probs_dropout_prob", "layer_norm_eps": "layer_norm_eps",
             "initializer_range": "initializer_range", "pad_token_id": "pad_token_id"}


@dataclasses.dataclass
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 1024
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_act: str = "gelu"  # exact (erf) GELU like HF's "gelu"; "gelu_new" is the tanh approximation
    dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    sentence_head: Literal["nsp", "sop", "none"] = "nsp"  # NSP and SOP are both a 2-way head on the pooled output
    pad_token_id: int = 0

    def validate(self) -> "BertConfig":
        for key in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                    "max_position_embeddings"):
            if int(getattr(self, key)) < 1:
                raise ConfigError(f"config key '{key}' must be ≥ 1, got {getattr(self, key)}",
                                  fix=f"e.g. --set {key}={getattr(BertConfig, key)}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"config key 'hidden_size' ({self.hidden_size}) must be divisible by 'num_heads' "
                              f"({self.num_heads})", fix="e.g. --set hidden_size=256 --set num_heads=4")
        for key in ("dropout", "attention_dropout"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(f"config key '{key}' must be in [0, 1), got {getattr(self, key)}",
                                  fix=f"e.g. --set {key}=0.1")
        if self.sentence_head not in SENTENCE_HEADS:
            raise ConfigError(f"config key 'sentence_head' is {self.sentence_head!r}",
                              fix="use one of: " + ", ".join(SENTENCE_HEADS))
        try:
            get_activation(self.hidden_act)
        except ValueError:
            raise ConfigError(f"config key 'hidden_act' names an unknown activation {self.hidden_act!r}",
                              fix="use gelu, gelu_new or relu") from None
        if self.type_vocab_size < 0 or not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError("config keys 'type_vocab_size'/'pad_token_id' are out of range",
                              fix="type_vocab_size ≥ 0 and 0 ≤ pad_token_id < vocab_size")
        return self

    @classmethod
    def from_hf(cls, hf_config, *, sentence_head: str = "nsp") -> "BertConfig":
        """An HF `BertConfig` (object, dict, or config.json path) → ours; raises ModelError for non-BERT shapes."""
        if isinstance(hf_config, (str, Path)):
            hf_config = json.loads(Path(hf_config).read_text())
        c = hf_config if isinstance(hf_config, dict) else hf_config.to_dict()
        if c.get("model_type", "bert") != "bert":
            raise ModelError(f"model_type {c['model_type']!r} is not BERT", fix="use a BERT-family checkpoint")
        if c.get("position_embedding_type", "absolute") != "absolute":
            raise ModelError(f"position_embedding_type={c['position_embedding_type']!r} is not supported",
                             fix="use a BERT checkpoint with absolute position embeddings")
        values = {ours: c[theirs] for ours, theirs in _HF_NAMES.items() if c.get(theirs) is not None}
        return cls(**values, sentence_head=sentence_head).validate()

    def to_hf(self):
        """→ `transformers.BertConfig` with the same architecture."""
        from transformers import BertConfig as HFBertConfig

        return HFBertConfig(**self.hf_dict())

    def hf_dict(self) -> dict:
        return {theirs: getattr(self, ours) for ours, theirs in _HF_NAMES.items()}


def _initializer(config: BertConfig):
    return tf.keras.initializers.TruncatedNormal(stddev=config.initializer_range)


def _as_config(config: BertConfig | dict) -> BertConfig:
    if isinstance(config, BertConfig):
        return config.validate()
    names = {f.name for f in dataclasses.fields(BertConfig)}
    return BertConfig(**{k: v for k, v in config.items() if k in names}).validate()


# === Layers ===

class BertEncoder(tf.keras.layers.Layer):
    """input_ids (B, T) → (sequence_output (B, T, H), pooled_output (B, H)).

    `attention_mask` (B, T), 1 = token, defaults to all ones (HF's default); `token_type_ids` to zeros.
    """

    def __init__(self, config: BertConfig | dict, **kwargs):
        super().__init__(**kwargs)
        self.config = _as_config(config)
        self.transformer = Encoder(**encoder_kwargs_from_bert_config(self.config.hf_dict()), name="transformer")
        self.pooler = tf.keras.layers.Dense(self.config.hidden_size, activation="tanh",
                                            kernel_initializer=_initializer(self.config), name="pooler")

    def build(self, input_shape):
        self.transformer(tf.ones([1, 2], tf.int32))  # builds under its own name scope
        with tf.name_scope(self.pooler.name):
            self.pooler.build([None, self.config.hidden_size])
        super().build(input_shape)

    @property
    def embeddings(self):
        return self.transformer.embedding.embeddings  # (V, H): the MLM decoder is tied to it

    def call(self, input_ids, *, attention_mask=None, token_type_ids=None, training=None):
        if attention_mask is None:
            attention_mask = tf.ones_like(input_ids)
        sequence = self.transformer(input_ids, padding_mask=tf.cast(attention_mask, tf.bool),
                                    token_type_ids=token_type_ids, training=training)  # (B, T, H)
        return sequence, self.pooler(sequence[:, 0])  # (B, T, H), (B, H)

    def get_config(self):
        return {**super().get_config(), "config": dataclasses.asdict(self.config)}


class MaskedLMHead(tf.keras.layers.Layer):
    """hidden (B, P, H) → float32 logits (B, P, V): dense + activation + LayerNorm, then the tied embeddings + bias."""

    def __init__(self, *, vocab_size: int, hidden_size: int, activation: str = "gelu", layer_norm_eps: float = 1e-12,
                 initializer_range: float = 0.02, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.hidden_size, self.activation = vocab_size, hidden_size, activation
        self.layer_norm_eps, self.initializer_range = layer_norm_eps, initializer_range
        self.dense = tf.keras.layers.Dense(
            hidden_size, activation=get_activation(activation),
            kernel_initializer=tf.keras.initializers.TruncatedNormal(stddev=initializer_range), name="transform")
        self.norm = tf.keras.layers.LayerNormalization(epsilon=layer_norm_eps, dtype="float32", name="norm")

    def build(self, input_shape):
        for layer in (self.dense, self.norm):
            with tf.name_scope(layer.name):
                layer.build([None, None, self.hidden_size])
        # added in float32 after the matmul: autocast would otherwise round it to the compute dtype
        self.bias = self.add_weight("bias", shape=[self.vocab_size], initializer="zeros",
                                    experimental_autocast=False)
        super().build(input_shape)

    def call(self, hidden, *, embeddings):
        x = tf.cast(self.norm(self.dense(hidden)), self.compute_dtype)  # (B, P, H)
        logits = tf.einsum("bph,vh->bpv", x, tf.cast(embeddings, self.compute_dtype))  # (B, P, V)
        return tf.cast(logits, tf.float32) + self.bias

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
                "activation": self.activation, "layer_norm_eps": self.layer_norm_eps,
                "initializer_range": self.initializer_range}


# === Model ===

class BertPretrainer(tf.keras.Model):
    """features → {"mlm_logits": (B, P, V), "sentence_logits": (B, 2)}, both float32.

    features: `pretraining_dataset`'s dict (input_ids, input_mask, segment_ids, masked_lm_positions, …; HF names
    attention_mask/token_type_ids also work). Without masked_lm_positions the MLM logits cover all T positions.
    `sentence_logits` is absent when `sentence_head="none"`.
    """

    def __init__(self, config: BertConfig | dict, **kwargs):
        super().__init__(**kwargs)
        self.config = _as_config(config)
        c = self.config
        self.encoder = BertEncoder(c, name="bert")
        self.mlm_head = MaskedLMHead(vocab_size=c.vocab_size, hidden_size=c.hidden_size, activation=c.hidden_act,
                                     layer_norm_eps=c.layer_norm_eps, initializer_range=c.initializer_range,
                                     name="mlm_head")
        self.sentence_head = (None if c.sentence_head == "none" else
                              tf.keras.layers.Dense(2, kernel_initializer=_initializer(c), dtype="float32",
                                                    name=f"{c.sentence_head}_head"))

    def call(self, features, training=None):
        ids = features["input_ids"]
        mask = features.get("input_mask", features.get("attention_mask"))
        segments = features.get("segment_ids", features.get("token_type_ids"))
        sequence, pooled = self.encoder(ids, attention_mask=mask, token_type_ids=segments, training=training)
        positions = features.get("masked_lm_positions")
        hidden = sequence if positions is None else tf.gather(sequence, positions, batch_dims=1)  # (B, P, H)
        outputs = {"mlm_logits": self.mlm_head(hidden, embeddings=self.encoder.embeddings)}
        if self.sentence_head is not None:
            outputs["sentence_logits"] = tf.cast(self.sentence_head(pooled), tf.float32)  # (B, 2)
        return outputs

    def dummy_inputs(self, batch: int = 1, length: int = 4) -> dict:
        ones = tf.ones([batch, length], tf.int32)
        return {"input_ids": ones, "input_mask": ones, "segment_ids": tf.zeros_like(ones),
                "masked_lm_positions": tf.zeros([batch, 1], tf.int32)}

    def build_weights(self) -> "BertPretrainer":
        if not self.built:
            self(self.dummy_inputs(), training=False)
        return self

    def get_config(self):
        return dataclasses.asdict(self.config)

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(_as_config(config))


def pretraining_losses(outputs: dict, features: dict, *, global_batch_size: int | None = None) -> dict:
    """Masked-LM and sentence cross-entropy as BERT defines them, float32 scalars {"mlm", "sentence", "loss"}.

    MLM: per example, the masked_lm_weights-weighted mean over its P positions; both losses then average over the
    batch — or sum / `global_batch_size` under a tf.distribute strategy, so replica losses add up to the global mean.
    """
    ce = tf.keras.losses.sparse_categorical_crossentropy
    weights = tf.cast(features["masked_lm_weights"], tf.float32)  # (B, P)
    token_loss = ce(features["masked_lm_ids"], outputs["mlm_logits"], from_logits=True)  # (B, P)
    per_example = tf.reduce_sum(token_loss * weights, -1) / tf.maximum(tf.reduce_sum(weights, -1), 1.0)  # (B,)

    def average(x):
        return tf.reduce_mean(x) if global_batch_size is None else tf.reduce_sum(x) / global_batch_size

    losses = {"mlm": average(per_example)}
    if "sentence_logits" in outputs:
        losses["sentence"] = average(ce(features["next_sentence_labels"], outputs["sentence_logits"],
                                        from_logits=True))
    losses["loss"] = tf.add_n(list(losses.values()))
    return losses


# === HF checkpoint interop ===

def _head_targets(model: BertPretrainer) -> list[tuple[tf.Variable, str, bool]]:
    """(variable, HF PyTorch name, transpose) for the pooler and heads (the encoder's come from the transformer)."""
    enc, head = model.encoder, model.mlm_head
    targets = [(enc.pooler.kernel, "bert.pooler.dense.weight", True), (enc.pooler.bias, "bert.pooler.dense.bias", False),
               (head.dense.kernel, "cls.predictions.transform.dense.weight", True),
               (head.dense.bias, "cls.predictions.transform.dense.bias", False),
               (head.norm.gamma, "cls.predictions.transform.LayerNorm.weight", False),
               (head.norm.beta, "cls.predictions.transform.LayerNorm.bias", False),
               (head.bias, "cls.predictions.bias", False)]
    if model.sentence_head is not None:
        targets += [(model.sentence_head.kernel, "cls.seq_relationship.weight", True),
                    (model.sentence_head.bias, "cls.seq_relationship.bias", False)]
    return targets


def bert_state(model: BertPretrainer) -> dict[str, np.ndarray]:
    """Our weights under HF's PyTorch names ('bert.…', 'cls.…'; kernels (out, in))."""
    model.build_weights()
    targets = [(v, "bert." + k, t) for v, k, t in bert_weight_targets(model.encoder.transformer)]
    return {key: (v.numpy().T if transpose else v.numpy()) for v, key, transpose in targets + _head_targets(model)}


@dataclasses.dataclass(frozen=True)
class LoadingInfo:
    weights_file: str
    missing: list[str]  # pooler/head weights the checkpoint lacks (freshly initialised)
    unused: list[str]  # checkpoint weights the model has no place for (e.g. a classifier)


def load_hf_pretrained(model_dir: str | Path, *, sentence_head: str = "nsp") -> tuple[BertPretrainer, BertConfig]:
    """An HF BERT dir → (BertPretrainer, BertConfig). Encoder weights must all be present; the pooler, MLM and
    sentence heads are loaded when the checkpoint has them and keep their fresh initialisation otherwise.
    `model.loading_info` says which file was read, which heads stayed fresh and which checkpoint keys were unused."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ModelError(f"'{model_dir}' has no config.json", fix="point at an HF BERT model dir")
    config = BertConfig.from_hf(model_dir / "config.json", sentence_head=sentence_head)
    state, weights_file = read_hf_state(model_dir)
    model = BertPretrainer(config).build_weights()
    encoder_state = {k: v for k, v in state.items() if k.startswith("bert.")}
    unused = {"bert." + k for k in load_bert_weights(model.encoder.transformer, encoder_state)}
    unused |= {k for k in state if not k.startswith("bert.")}
    missing = []
    for variable, key, transpose in _head_targets(model):
        if key not in state:
            missing.append(key)
            continue
        value = state[key].T if transpose else state[key]
        if tuple(value.shape) != tuple(variable.shape):
            raise ModelError(f"'{weights_file}': '{key}' has shape {value.shape}, expected {tuple(variable.shape)}",
                             fix="check that config.json belongs to these weights")
        variable.assign(value)
        unused.discard(key)
    # decoder.weight is the tied word-embedding table; position_ids is a buffer, not a weight
    unused = sorted(k for k in unused if k not in ("cls.predictions.decoder.weight", "bert.embeddings.position_ids"))
    model.loading_info = LoadingInfo(weights_file=str(weights_file), missing=missing, unused=unused)
    return model, config


def save_hf_pretrained(model: BertPretrainer, config: BertConfig, out_dir: str | Path, *,
                       vocab_file: str | Path | None = None) -> Path:
    """Writes `out_dir/{config.json, tf_model.h5}` (+ tokenizer files) for TFBertForPreTraining /
    TFBertForSequenceClassification.from_pretrained. `vocab_file`: a vocab.txt or a tokenizer dir holding one."""
    from transformers import TFBertForPreTraining
    from transformers.modeling_tf_pytorch_utils import load_pytorch_state_dict_in_tf2_model

    out_dir = Path(out_dir)
    differs = [k for k in ARCHITECTURE_KEYS if getattr(config, k) != getattr(model.config, k)]
    if differs:
        raise ModelError(f"config differs from the model's in {differs}", fix="pass model.config (dropouts may differ)")
    copies: dict[str, Path] = {}  # name in out_dir → source
    if vocab_file is not None:
        vocab_file = Path(vocab_file)
        vocab = vocab_file / "vocab.txt" if vocab_file.is_dir() else vocab_file
        if not vocab.is_file():
            raise ModelError(f"vocab_file '{vocab_file}' is not a vocab.txt or a dir holding one",
                             fix="pass the tokenizer dir (or its vocab.txt) the model was trained with")
        tokens = len(vocab.read_text(encoding="utf-8").splitlines())
        if tokens != config.vocab_size:
            raise ModelError(f"vocab_file '{vocab}' has {tokens} tokens, the model's vocab_size is "
                             f"{config.vocab_size}", fix="pass the vocabulary the model was trained with")
        copies["vocab.txt"] = vocab
        if vocab_file.is_dir():
            copies.update({n: vocab_file / n for n in TOKENIZER_FILES[1:] if (vocab_file / n).is_file()})
    # the HF model is built only as the writer: its h5 layout is what from_pretrained expects
    hf = TFBertForPreTraining(config.to_hf())
    hf(hf.dummy_inputs, training=False)
    _, info = load_pytorch_state_dict_in_tf2_model(hf, bert_state(model), allow_missing_keys=True,
                                                   output_loading_info=True)
    # without a sentence head HF's NSP layer keeps its fresh initialisation; every other weight must be ours
    problems = [k for k in info["missing_keys"] if config.sentence_head != "none" or "seq_relationship" not in k]
    problems += list(info["unexpected_keys"]) + list(info.get("mismatched_keys", []))
    if problems:
        raise ModelError(f"HF TFBertForPreTraining did not take weights {problems[:3]}",
                         fix="pass the config the model was built with")
    out_dir.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out_dir)
    for name, source in copies.items():
        shutil.copy(source, out_dir / name)
    return out_dir
