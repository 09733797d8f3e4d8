"""Weight clustering on the tiny real baseline: ≤ k distinct values per clustered kernel after fine-tuning and after
a reload, an accuracy bound, a smaller gzip; 1-D k-means recovers known centres."""

import numpy as np
import pytest

from moatkit.data.core.errors import ConfigError
from moatkit.models.compress.base import ClusterSettings, token_id_function
from moatkit.models.compress.cluster import compress, kmeans_1d, unique_values
from moatkit.models.compress.prune import block_kernels, word_embeddings


def accuracy(model, context) -> float:
    logits = token_id_function(model)(context.batch("test", slice(None)))
    return float(np.mean(logits.argmax(-1) == context.targets["test"]))


def test_clustering_keeps_at_most_k_values_per_kernel(context):
    from transformers import TFBertForSequenceClassification

    baseline_accuracy = accuracy(context.load_baseline(), context)
    settings = ClusterSettings(clusters=8, epochs=1, learning_rate=1e-3)
    [variant] = compress(context, settings)
    assert variant.name == "cluster-8" and variant.method == "cluster"
    clustered = block_kernels(variant.model) + [word_embeddings(variant.model)]
    assert len(variant.notes["unique_values"]) == len(clustered) == 2 * 6 + 1
    for weight in clustered:
        assert 2 <= unique_values(weight.numpy()) <= 8, weight.name
    assert max(variant.notes["unique_values"].values()) <= 8
    classifier = next(w for w in variant.model.weights if "classifier" in w.name and "kernel" in w.name)
    assert unique_values(classifier.numpy()) > 8  # the head is left alone
    # Measured: baseline 0.68, clustered 0.69 on the 200 test sentences; gzip of the weights 3.70 MB → 0.55 MB.
    assert accuracy(variant.model, context) >= baseline_accuracy - 0.05
    assert variant.notes["gzip_weights_bytes"] * 2 < variant.notes["baseline_gzip_weights_bytes"]

    again = TFBertForSequenceClassification.from_pretrained(variant.hf_dir)  # what the model repository exports
    for weight in block_kernels(again) + [word_embeddings(again)]:
        assert unique_values(weight.numpy()) <= 8, weight.name
    batch = context.batch("test", slice(0, 16))
    np.testing.assert_array_equal(token_id_function(again)(batch), token_id_function(variant.model)(batch))


@pytest.mark.parametrize("init", ["kmeans_plus_plus", "linear", "density_based"])
def test_kmeans_1d_recovers_known_centres(init):
    rng = np.random.default_rng(0)
    centres = np.array([-0.5, 0.0, 0.2, 0.9], np.float32)
    values = (rng.choice(centres, size=(300, 40)) + rng.normal(0, 0.01, (300, 40))).astype(np.float32)
    centroids, index = kmeans_1d(values, 4, init=init)
    np.testing.assert_allclose(np.sort(centroids.numpy()), centres, atol=0.01)
    assert index.shape == values.shape
    assert np.abs(centroids.numpy()[index.numpy()] - values).max() < 0.06


def test_settings_are_validated(context):
    with pytest.raises(ConfigError, match="cluster.clusters"):
        compress(context, ClusterSettings(clusters=1))
