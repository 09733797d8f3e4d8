"""QAT on the tiny fine-tuned BERT: the Functional rebuild is exact, the converted model is int8 and agrees."""

import dataclasses

import numpy as np
import pytest

from moatkit.models.compress.base import QATSettings, token_id_function


@pytest.fixture(scope="module")
def baseline(tiny_context):
    return tiny_context.load_baseline()


def test_functional_rebuild_equals_baseline_logits(tiny_context, baseline):
    from moatkit.models.compress.qat import functional_classifier, max_logit_difference

    model = functional_classifier(baseline)
    batch = tiny_context.batch("test", slice(0, 64))  # padded to max_length: masks matter
    assert batch["attention_mask"].min() == 0
    assert max_logit_difference(baseline, model, batch) <= 1e-4
    # one node per role, so TFMOT sees attention and feed-forward as layers of their own
    kinds = {type(layer).__name__ for layer in model.layers}
    assert {"QuantizableAttention", "QuantizableFeedForward", "LayerNormalization",
            "TokenAndPositionEmbedding"} <= kinds


@pytest.mark.slow  # ≈ 45 s of QAT training; `make test-all` runs it
def test_qat_converts_to_int8_tflite_that_agrees_with_float(tiny_context, baseline):
    from moatkit.models.compress import qat

    # the default settings: one epoch at 1e-5 barely moves the weights, so disagreement is quantization error
    # (on 320 of the train sentences: 10 steps keep the test short)
    train = {"train": {name: values[:320] for name, values in tiny_context.arrays["train"].items()}}
    context = dataclasses.replace(tiny_context, arrays={**tiny_context.arrays, **train},
                                  targets={**tiny_context.targets, "train": tiny_context.targets["train"][:320]})
    [variant] = qat.compress(context, QATSettings())
    assert variant.notes["fine_tune_steps"] == 10
    assert variant.name == "qat-int8" and variant.tflite_path.is_file()
    layers = baseline.config.num_hidden_layers
    for summary in (qat.tflite_summary(variant.tflite_path), qat.tflite_summary(variant.serving_tflite)):
        # q, k, v, attention output, FFN in and out per block, plus pooler and classifier: int8 x int8 each
        assert summary["fully_connected"] == 6 * layers + 2
        assert summary["fully_connected_int8"] == summary["fully_connected"]
        assert summary["tensor_dtypes"]["int8"] > 10 * layers
    assert qat.tflite_summary(variant.tflite_path)["ops"]["SOFTMAX"] == layers  # attention: kept float
    assert variant.notes["rebuild_max_logit_difference"] <= 1e-4
    assert variant.notes["dev_agreement_tflite_vs_qat_keras"] >= 0.9
    test = tiny_context.arrays["test"]
    int8 = np.argmax(qat.predict_in_batches(variant.predict, test), axis=-1)
    float32 = np.argmax(qat.predict_in_batches(token_id_function(baseline), test), axis=-1)
    assert np.mean(int8 == float32) >= 0.9
