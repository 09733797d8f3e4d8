"""Weight clustering (weight sharing) with fine-tuning: every clustered kernel keeps at most `clusters` distinct values.

TFMOT's `cluster_weights` needs a Functional/Sequential model of ClusterableLayers: it rejects the HF baseline
(subclassed), and our blocks implement PrunableLayer only. So the clustering runs from a Keras callback over the
kernel variables of any model, as weight sharing in Deep Compression (Han et al., 2016): centroids come from TFMOT's
own initialisers (k-means++ by default) refined by a few Lloyd iterations; each weight is assigned to its nearest
centroid once; after every optimizer step each centroid moves to the mean of its members' updated values and the
members snap back onto it, so a shared value trains on the average of its members' updates (TFMOT's "AVG" gradient
aggregation). Assignments stay fixed, as in TFMOT; nothing is left to strip.

Clustered: the same weights as pruning (the Dense kernels of the transformer blocks and, unless `embeddings: false`,
the word embeddings), each with its own centroids.
"""
from __future__ import annotations


import numpy as np
import tensorflow as tf
# TFMOT's centroid initialisers; the public API only reaches them through cluster_weights (Functional models only).
from tensorflow_model_optimization.python.core.clustering.keras.cluster_config import CentroidInitialization
from tensorflow_model_optimization.python.core.clustering.keras.clustering_centroids import \
    CentroidsInitializerFactory

from moatkit.models.compress.base import ClusterSettings, CompressContext, Variant
from moatkit.models.compress.prune import block_kernels, fine_tune, reload_clean, short_name, word_embeddings
from moatkit.models.compress.report import gzip_bytes

INITIALISERS = {"kmeans_plus_plus": CentroidInitialization.KMEANS_PLUS_PLUS, "linear": CentroidInitialization.LINEAR,
                "density_based": CentroidInitialization.DENSITY_BASED, "random": CentroidInitialization.RANDOM}


def nearest(flat: tf.Tensor, centroids: tf.Tensor) -> tf.Tensor:
    """Index of the nearest of the sorted `centroids` for each value of `flat` (n,): a binary search over the
    midpoints, O(n log k) memory-light (TFMOT's argmin over an (n, k) distance matrix needs 0.75 GB for
    MiniLM's word embeddings at k=16)."""
    bounds = (centroids[1:] + centroids[:-1]) / 2  # (k - 1,)
    return tf.searchsorted(bounds, flat, side="right", out_type=tf.int32)  # (n,)


def kmeans_1d(values, clusters: int, *, init: str = "kmeans_plus_plus", iterations: int = 5):
    """(sorted centroids (k,), index of each value (values.shape) int32) for the values of one kernel."""
    flat = tf.reshape(tf.convert_to_tensor(values, tf.float32), [-1])  # (n,)
    centroids = CentroidsInitializerFactory.get_centroid_initializer(INITIALISERS[init])(
        flat, clusters).get_cluster_centroids()
    centroids = tf.sort(tf.cast(tf.reshape(centroids, [-1]), tf.float32))  # (k,)
    for _ in range(iterations):  # Lloyd: empty clusters keep their centroid
        index = nearest(flat, centroids)
        means = tf.math.unsorted_segment_mean(flat, index, clusters)
        counts = tf.math.unsorted_segment_sum(tf.ones_like(flat), index, clusters)
        centroids = tf.sort(tf.where(counts > 0, means, centroids))
    return centroids, tf.reshape(nearest(flat, centroids), tf.shape(values))


class WeightSharing(tf.keras.callbacks.Callback):
    """Clusters `variables` at construction (they hold ≤ `clusters` values from then on) and keeps them clustered
    while `model.fit` trains: after each optimizer step, centroid = mean of its members, members = centroid."""

    def __init__(self, *, variables: list[tf.Variable], clusters: int, init: str = "kmeans_plus_plus",
                 iterations: int = 5):
        super().__init__()
        self.variables, self.clusters = list(variables), clusters
        self.indices = []
        for variable in self.variables:
            centroids, index = kmeans_1d(variable, clusters, init=init, iterations=iterations)
            self.indices.append(tf.Variable(index, trainable=False, name="cluster_index"))
            variable.assign(tf.gather(centroids, index))
        self._snap = tf.function(self._share)

    def _share(self):
        for variable, index in zip(self.variables, self.indices):
            flat, members = tf.reshape(variable, [-1]), tf.reshape(index, [-1])
            centroids = tf.math.unsorted_segment_mean(flat, members, self.clusters)  # (k,)
            variable.assign(tf.reshape(tf.gather(centroids, members), tf.shape(variable)))

    def on_train_batch_end(self, batch, logs=None):
        self._snap()


def unique_values(variable) -> int:
    return int(np.unique(np.asarray(variable)).size)


def clustered_weights(model, settings: ClusterSettings) -> list[tf.Variable]:
    return block_kernels(model) + ([word_embeddings(model)] if settings.embeddings else [])


def compress(context: CompressContext, settings: ClusterSettings, *, verbose: int = 2) -> list[Variant]:
    settings.validate()
    model = context.load_baseline()
    sharing = WeightSharing(variables=clustered_weights(model, settings), clusters=settings.clusters, init=settings.centroid_init)
    steps = fine_tune(model, context, settings, callbacks=[sharing], verbose=verbose)
    name = f"cluster-{settings.clusters}"
    hf_dir = context.save_hf(model, name)
    model = reload_clean(hf_dir)
    variables = clustered_weights(model, settings)
    baseline_weights = context.model_dir / "tf_model.h5"
    notes = {"clusters": settings.clusters, "centroid_init": settings.centroid_init, "steps": steps,
             "unique_values": {short_name(v): unique_values(v.numpy()) for v in variables},
             "clustered_params": int(sum(np.prod(v.shape) for v in variables)),
             "gzip_weights_bytes": gzip_bytes(hf_dir / "tf_model.h5"),
             "baseline_gzip_weights_bytes": gzip_bytes(baseline_weights) if baseline_weights.is_file() else None}
    return [Variant(name=name, method="cluster", model=model, hf_dir=hf_dir, params=int(model.count_params()),
                    notes=notes)]
