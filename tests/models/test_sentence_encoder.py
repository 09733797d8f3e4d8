"""The sentence-encoder SavedModel (models/sentence_encoder.py) against the reference path: HF's tokenizer and
TFBertModel with mean pooling and L2 normalisation in numpy (sentence-transformers' recipe for all-MiniLM-L6-v2)."""
import json

import numpy as np
import pytest

from moatkit.data.core.errors import ConfigError, ModelError
from moatkit.models.sentence_encoder import ENCODER_FILE, EncoderExportConfig, export_sentence_encoder

TEXTS = ["How do I make a Python script executable on Unix?", "Why is Python slow?",
         "Ünïcode, emoji 🙂 and a rather long sentence " * 8]  # the last is cut at max_length


def test_exported_encoder_matches_hf_mean_pooling(support_build, minilm_dir):
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the graph's tokenizer ops)
    from transformers import BertTokenizerFast, TFBertModel

    version = support_build["repo"] / "support-encoder" / "1"
    meta = json.loads((version / ENCODER_FILE).read_text())
    assert meta["max_length"] == 128 and meta["dim"] == 384 and meta["pooling"] == "mean"
    ours = tf.saved_model.load(str(version)).signatures["serving_default"](text=tf.constant(TEXTS))["embedding"]
    ours = ours.numpy()
    tokens = BertTokenizerFast.from_pretrained(minilm_dir)(TEXTS, padding=True, truncation=True, max_length=128,
                                                            return_tensors="np")
    hidden = TFBertModel.from_pretrained(minilm_dir)(input_ids=tokens["input_ids"],
                                                     attention_mask=tokens["attention_mask"]).last_hidden_state.numpy()
    mask = tokens["attention_mask"][:, :, None].astype(np.float32)
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    reference = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    assert ours.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(ours, reference, atol=2e-5)
    assert float(ours[0] @ ours[1]) < float(ours[0] @ ours[0])  # different questions are not the same point


def test_bad_export_settings_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="max_length"):
        export_sentence_encoder(EncoderExportConfig(repo=str(tmp_path), max_length=4))
    (tmp_path / "notbert").mkdir()
    with pytest.raises(ModelError, match="not a BERT checkpoint dir"):
        export_sentence_encoder(EncoderExportConfig(model=str(tmp_path / "notbert"), repo=str(tmp_path)))
