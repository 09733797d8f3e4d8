"""HF checkpoint interop, in one place: PyTorch-format BERT checkpoints (safetensors) → native TF HF model dirs
without torch; our Encoder ⇄ PyTorch-named BERT weights; reading an HF BERT dir's weights (safetensors or h5).

`fetch_model(name)` is the model side of `moat data fetch`: moatkit.data.fetch keeps the carrier's checkpoint as
shipped (`$MOAT_HOME/checkpoints/NAME`), and this module converts it once into `$MOAT_HOME/models/NAME`.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import tensorflow as tf

from moatkit.data.catalog import get_entry
from moatkit.data.core.errors import ModelError
from moatkit.data.core.files import staged_dir
from moatkit.data.fetch import FETCH_MARKER, fetch, is_cached, moat_home
from moatkit.models.transformer import Encoder

WEIGHT_FILES = ("model.safetensors", "tf_model.h5")  # read in this order
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def convert_safetensors_bert(src: str | Path, out: str | Path) -> dict:
    """Writes `out/{config.json, tf_model.h5, vocab.txt, ...}` loadable by TFBert*.from_pretrained(out)."""
    from safetensors.numpy import load_file
    from transformers import BertConfig, TFBertModel
    from transformers.modeling_tf_pytorch_utils import load_pytorch_state_dict_in_tf2_model

    src, out = Path(src), Path(out)
    for required in ("config.json", "model.safetensors", "vocab.txt"):
        if not (src / required).is_file():
            raise ModelError(f"'{src}' has no {required}", fix="point at an HF BERT dir with safetensors weights")
    config = BertConfig.from_pretrained(src)
    state = load_file(src / "model.safetensors")
    # Sentence-transformers checkpoints store the bare encoder; HF's TF classes expect the `bert.` prefix.
    state = {(k if k.startswith("bert.") else "bert." + k): v for k, v in state.items()}
    model = TFBertModel(config)
    model(model.dummy_inputs, training=False)
    _, info = load_pytorch_state_dict_in_tf2_model(model, state, allow_missing_keys=True, output_loading_info=True)
    # The pooler is not used by sentence-transformers and may be absent; anything else missing is an error.
    missing = [k for k in info["missing_keys"] if "pooler" not in k]
    if missing:
        raise ModelError(f"'{src}/model.safetensors' lacks weights {missing[:3]}…", fix="use a BERT checkpoint")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy(src / name, out / name)
    params = int(sum(np.prod(w.shape) for w in model.weights))
    return {"architecture": "bert", "parameters": params, "missing_keys": info["missing_keys"],
            "unexpected_keys": info["unexpected_keys"], "config": json.loads(config.to_json_string())}


def fetch_model(name: str, *, source: str | Path | None = None, force: bool = False) -> Path:
    """Returns the TF model dir of catalog model `name`, fetching and converting it on first use."""
    entry = get_entry(name)
    out = moat_home() / "models" / entry.name
    if not force and source is None and entry.kind == "model" and is_cached(out / FETCH_MARKER, entry):
        return out
    checkpoint = fetch(name, source=source, force=force, kind="model")
    fetched = json.loads((checkpoint / FETCH_MARKER).read_text(encoding="utf-8"))
    with staged_dir(out) as staging:
        info = convert_safetensors_bert(checkpoint, staging)
        (staging / FETCH_MARKER).write_text(json.dumps({**fetched, **info}, indent=2))
    return out


# === Our encoder ⇄ PyTorch-named BERT weights ===

def encoder_kwargs_from_bert_config(config) -> dict:
    """HF BertConfig (object or dict) → Encoder keyword arguments with the same architecture."""
    c = config if isinstance(config, dict) else config.to_dict()
    if c.get("position_embedding_type", "absolute") != "absolute":
        raise ModelError(f"position_embedding_type={c['position_embedding_type']!r} is not supported",
                         fix="use a BERT checkpoint with absolute position embeddings")
    return dict(vocab_size=c["vocab_size"], dim=c["hidden_size"], num_layers=c["num_hidden_layers"],
                num_heads=c["num_attention_heads"], intermediate_dim=c["intermediate_size"],
                max_length=c["max_position_embeddings"], position="learned", type_vocab_size=c["type_vocab_size"],
                scale_embeddings=False, embedding_norm=True, dropout=c["hidden_dropout_prob"],
                attention_dropout=c["attention_probs_dropout_prob"], activation=c["hidden_act"], norm_first=False,
                layer_norm_epsilon=c["layer_norm_eps"], initializer_range=c["initializer_range"],
                pad_id=c.get("pad_token_id") or 0)


def bert_state_from_tf_model(model) -> dict[str, np.ndarray]:
    """HF TFBert* model → PyTorch-named state dict ('embeddings.word_embeddings.weight', …; kernels (out, in))."""
    from transformers.modeling_tf_pytorch_utils import TransposeType, convert_tf_weight_name_to_pt_weight_name

    state = {}
    for weight in model.weights:
        name, transpose = convert_tf_weight_name_to_pt_weight_name(weight.name, tf_weight_shape=weight.shape)
        value = weight.numpy()
        state[name.split("bert.", 1)[-1]] = value.T if transpose != TransposeType.NO else value
    return state


def load_bert_weights(encoder: Encoder, state: dict[str, np.ndarray]) -> list[str]:
    """Assigns a PyTorch-named BERT state dict (safetensors, or `bert_state_from_tf_model`) to `encoder`.

    Keys may carry a 'bert.' prefix. Returns the state keys that were not used (pooler, heads). Raises ModelError
    naming the first missing or mis-shaped weight.
    """
    state = {k[len("bert."):] if k.startswith("bert.") else k: v for k, v in state.items()}
    used = set()
    for variable, key, transpose in bert_weight_targets(encoder):
        if key not in state:
            raise ModelError(f"BERT weights lack '{key}'", fix="check that the checkpoint matches the encoder config")
        value = np.asarray(state[key]).T if transpose else np.asarray(state[key])
        if tuple(value.shape) != tuple(variable.shape):
            raise ModelError(f"BERT weight '{key}' has shape {value.shape}, the encoder expects "
                             f"{tuple(variable.shape)}",
                             fix="build the encoder with encoder_kwargs_from_bert_config(checkpoint config)")
        variable.assign(value)
        used.add(key)
    return sorted(set(state) - used)


def bert_weight_targets(encoder: Encoder) -> list[tuple[tf.Variable, str, bool]]:
    """(variable, PyTorch BERT name without 'bert.', transpose) for every encoder weight; builds the encoder."""
    if not encoder.built:
        encoder(tf.ones([1, 2], tf.int32))
    emb = encoder.embedding
    targets = [(emb.token.embeddings, "embeddings.word_embeddings.weight", False),
               (emb.positions.embeddings, "embeddings.position_embeddings.weight", False),
               (emb.norm.gamma, "embeddings.LayerNorm.weight", False),
               (emb.norm.beta, "embeddings.LayerNorm.bias", False)]
    if emb.type is not None:
        targets.append((emb.type.embeddings, "embeddings.token_type_embeddings.weight", False))
    for i, block in enumerate(encoder.blocks):
        p = f"encoder.layer.{i}."
        attn, ffn = block.attention, block.feed_forward
        for dense, name in ((attn.query_dense, "attention.self.query"), (attn.key_dense, "attention.self.key"),
                            (attn.value_dense, "attention.self.value"), (attn.output_dense, "attention.output.dense"),
                            (ffn.intermediate, "intermediate.dense"), (ffn.output_dense, "output.dense")):
            targets += [(dense.kernel, p + name + ".weight", True), (dense.bias, p + name + ".bias", False)]
        for norm, name in ((block.attention_norm, "attention.output.LayerNorm"),
                           (block.feed_forward_norm, "output.LayerNorm")):
            targets += [(norm.gamma, p + name + ".weight", False), (norm.beta, p + name + ".bias", False)]
    return targets


# === Reading HF BERT dirs ===

def _normalise_key(key: str) -> str:
    # old Google conversions name LayerNorm parameters gamma/beta; sentence-transformers drop the 'bert.' prefix
    key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
    if key == "cls.predictions.decoder.bias":
        return "cls.predictions.bias"
    return "bert." + key if key.startswith(("embeddings.", "encoder.", "pooler.")) else key


def _read_tf_h5(path: Path) -> dict[str, np.ndarray]:
    """HF's Keras h5 (`layer/<model scope>/…/kernel:0`) → PyTorch names, via HF's own name converter."""
    import h5py
    from transformers.modeling_tf_pytorch_utils import TransposeType, convert_tf_weight_name_to_pt_weight_name

    state: dict[str, np.ndarray] = {}

    def visit(name, item):
        if isinstance(item, h5py.Dataset) and "/" in name:
            key, transpose = convert_tf_weight_name_to_pt_weight_name(name.split("/", 1)[1], tf_weight_shape=item.shape)
            value = item[()]
            # the tied decoder repeats the word embeddings under the MLM layer: the first copy wins
            state.setdefault(key, value.T if transpose != TransposeType.NO else value)

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return state


def read_hf_state(model_dir: str | Path) -> tuple[dict[str, np.ndarray], Path]:
    """The weights of an HF BERT dir as {PyTorch name: array} and the file they came from (safetensors first)."""
    model_dir = Path(model_dir)
    for name in WEIGHT_FILES:
        path = model_dir / name
        if path.is_file():
            if name.endswith(".safetensors"):
                from safetensors.numpy import load_file

                raw = load_file(path)
            else:
                raw = _read_tf_h5(path)
            return {_normalise_key(k): v for k, v in raw.items()}, path
    sharded = sorted(p.name for p in model_dir.glob("*.index.json"))
    raise ModelError(f"'{model_dir}' has no {' or '.join(WEIGHT_FILES)}" + (f" (sharded: {sharded})" if sharded else ""),
                     fix="point at an HF BERT dir (config.json + model.safetensors or tf_model.h5); "
                         "re-save sharded checkpoints unsharded")
