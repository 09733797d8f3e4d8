"""PyTorch-format BERT checkpoints (safetensors) → native TF HF model dirs, without installing torch."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from app.errors import ModelError

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
