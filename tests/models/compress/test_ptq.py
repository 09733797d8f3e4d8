"""TFLite post-training quantization on the tiny real baseline: sizes, agreement with the float model, the
LiteRT interpreter, and the config errors of `moat compress`."""

import sys

import numpy as np
import pytest

from moatkit.data.core.errors import ConfigError


@pytest.fixture(scope="module")
def ptq_run(tiny_context):
    from moatkit.models.compress import ptq
    from moatkit.models.compress.base import PTQSettings, token_id_function

    variants = {v.name: v for v in ptq.compress(tiny_context, PTQSettings(representative_examples=32))}
    baseline = token_id_function(tiny_context.load_baseline())(tiny_context.arrays["test"])
    return variants, baseline


def test_ptq_variants_shrink_and_agree_with_the_float_model(ptq_run, tiny_context):
    variants, baseline = ptq_run
    assert sorted(variants) == ["ptq-dynamic", "ptq-float16", "ptq-int8"]
    params = variants["ptq-float16"].params
    assert 990_000 < params < 1_010_000  # 30,522 × 32 embeddings + 2 layers + head (997,090)
    sizes = {name: v.tflite_path.stat().st_size for name, v in variants.items()}
    # float16 stores 2 bytes per weight, int8 modes 1 byte (plus graph and per-channel scales)
    assert 2.0 * params < sizes["ptq-float16"] < 2.2 * params
    assert 1.0 * params < sizes["ptq-dynamic"] < 1.15 * params
    assert 1.0 * params < sizes["ptq-int8"] < 1.15 * params

    labels = tiny_context.targets["test"]
    base_accuracy = (baseline.argmax(-1) == labels).mean()
    assert base_accuracy > 0.6  # the tiny baseline learned something (measured 0.695)
    outputs = {name: v.predict(tiny_context.arrays["test"]) for name, v in variants.items()}
    np.testing.assert_allclose(outputs["ptq-float16"], baseline, atol=0.02)
    agree = {name: (out.argmax(-1) == baseline.argmax(-1)).mean() for name, out in outputs.items()}
    assert agree["ptq-float16"] == 1.0
    assert agree["ptq-dynamic"] >= 0.97  # measured 1.0 on 200 sentences
    # Activations (LayerNorm, softmax, GELU inputs) in int8 too, calibrated on 32 sentences: a 32-wide model has
    # little headroom (measured 0.725-0.9 agreement across runs)
    assert agree["ptq-int8"] >= 0.65
    assert (outputs["ptq-dynamic"].argmax(-1) == labels).mean() >= base_accuracy - 0.03


def test_flatbuffers_take_token_ids_and_run_on_litert(ptq_run, tiny_context):
    from ai_edge_litert.interpreter import Interpreter

    variants, _ = ptq_run
    for variant in variants.values():
        assert variant.notes["interpreter"] == "ai-edge-litert"
        interpreter = Interpreter(model_path=str(variant.tflite_path))  # no tensorflow_text kernels registered
        runner = interpreter.get_signature_runner("serving_default")
        inputs = runner.get_input_details()
        assert sorted(inputs) == ["attention_mask", "input_ids"]
        assert all(d["dtype"] == np.int32 and list(d["shape_signature"]) == [-1, tiny_context.max_length]
                   for d in inputs.values())
        logits = runner(**tiny_context.batch("test", slice(0, 3)))["logits"]
        assert logits.shape == (3, 2) and logits.dtype == np.float32
    int8 = variants["ptq-int8"]
    assert int8.notes["int8_strict"] is True  # every op got an int8 kernel
    interpreter = Interpreter(model_path=str(int8.tflite_path))
    activations = [t for t in interpreter.get_tensor_details() if t["dtype"] == np.int8]
    dynamic = Interpreter(model_path=str(variants["ptq-dynamic"].tflite_path)).get_tensor_details()
    assert len(activations) > 2 * sum(t["dtype"] == np.int8 for t in dynamic)  # int8 activations, not only weights


def test_config_errors_name_the_key(tiny_run):
    from moatkit.data.core.config import load_config
    from moatkit.models.compress.base import CompressConfig, load_context
    from moatkit.models.compress.report import method_module

    with pytest.raises(ConfigError, match="'methods' has unknown entries \\['quantum'\\]"):
        load_config(CompressConfig, overrides=["methods=[ptq,quantum]"])
    with pytest.raises(ConfigError, match="ptq.modes"):
        load_config(CompressConfig, overrides=["ptq.modes=[int4]"])
    with pytest.raises(ConfigError, match="unknown compression method 'svd'"):
        method_module("svd")
    with pytest.raises(Exception, match="not a fine-tuned moatkit model"):
        load_context(CompressConfig(model_dir=str(tiny_run)))
    assert load_config(CompressConfig, overrides=["methods=[all]"]).selected_methods() == [
        "ptq", "prune", "cluster", "qat", "distill"]


def test_a_missing_method_module_is_a_config_error(monkeypatch):
    from moatkit.models.compress.report import method_module

    monkeypatch.setitem(sys.modules, "moatkit.models.compress.distill", None)  # what an install without the file sees
    with pytest.raises(ConfigError, match="compression method 'distill' is not available"):
        method_module("distill")
