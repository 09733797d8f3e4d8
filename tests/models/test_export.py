"""Export of the fine-tuned classifier: raw strings in, same numbers as the Keras model, reload in a new process."""
import json
import subprocess
import sys

import numpy as np
import pytest

TEXTS = ["a wonderful, moving film", "a dull, lifeless and badly acted mess", "Ünïcödé café — naïve 😀", "",
         "long " * 300]  # longer than max_length: both paths truncate the same way


@pytest.fixture(scope="module")
def exported(small_export):
    """small_run's export (the budget demo's, tests/conftest.py), shared with the serving tests: only read here."""
    return small_export


def _keras_probabilities(model_dir, texts):
    from transformers import BertTokenizerFast

    from moatkit.models.export import load_text_model
    model, _, task = load_text_model(model_dir)
    batch = BertTokenizerFast.from_pretrained(model_dir)(texts, padding=True, truncation=True,
                                                         max_length=task["max_length"], return_tensors="np")
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], training=False).logits
    return __import__("tensorflow").nn.softmax(logits, -1).numpy()


def test_export_layout_and_signature(exported):
    from pathlib import Path

    version_dir = Path(exported["version_dir"])
    assert version_dir.name == "1" and exported["version"] == 1
    assert (version_dir / "saved_model.pb").is_file()
    assert (version_dir / "assets.extra" / "tf_serving_warmup_requests").is_file()
    assert not list(version_dir.parent.glob(".tmp-*"))


def test_reload_in_fresh_process_matches_keras(exported, small_run):
    script = (
        "import json, sys, tensorflow as tf, tensorflow_text\n"
        "f = tf.saved_model.load(sys.argv[1]).signatures['serving_default']\n"
        "out = f(text=tf.constant(json.loads(sys.argv[2])))\n"
        "print(json.dumps({'p': out['probabilities'].numpy().tolist(), 'label': out['label'].numpy().astype(str).tolist(),"
        " 'inputs': {k: [v.dtype.name, v.shape.as_list()] for k, v in f.structured_input_signature[1].items()}}))\n")
    result = subprocess.run([sys.executable, "-c", script, exported["version_dir"], json.dumps(TEXTS)],
                            capture_output=True, text=True, timeout=300,
                            env={**__import__("os").environ, "TF_USE_LEGACY_KERAS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    served = json.loads(result.stdout.strip().splitlines()[-1])
    assert served["inputs"] == {"text": ["string", [None]]}
    expected = _keras_probabilities(small_run["saved_model_dir"], TEXTS)
    assert np.abs(np.array(served["p"]) - expected).max() < 1e-5
    assert served["label"] == [small_run["labels"][i] for i in expected.argmax(-1)]


def test_versions_increment_and_bad_model_dir(exported, small_run, tmp_path):
    from pathlib import Path

    from moatkit.data.core.errors import ModelError
    from moatkit.models.export import ExportConfig, next_version

    assert next_version(Path(exported["version_dir"]).parent) == 2
    with pytest.raises(ModelError, match="is not a fine-tuned moatkit model"):
        from moatkit.models.export import export_text_model
        export_text_model(ExportConfig(model_dir=str(tmp_path), repo=str(tmp_path / "repo")))
