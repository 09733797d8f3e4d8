"""Position-wise feed-forward block: Dense(intermediate, activation) → dropout → Dense(width)."""
from __future__ import annotations


import tensorflow as tf
import tensorflow_model_optimization as tfmot

from moatkit.models.layers.attention import clone_initializer


def get_activation(name: str):
    # HF's BERT "gelu" is the exact erf form; "gelu_new"/"gelu_approx" the tanh approximation.
    if name == "gelu":
        return lambda x: tf.nn.gelu(x, approximate=False)
    if name in ("gelu_new", "gelu_approx"):
        return lambda x: tf.nn.gelu(x, approximate=True)
    return tf.keras.activations.get(name)


class FeedForward(tf.keras.layers.Layer, tfmot.sparsity.keras.PrunableLayer):
    dense_class = tf.keras.layers.Dense  # models.compress.qat swaps in a TFLite-friendlier one

    def __init__(self, *, intermediate_dim: int, activation: str = "relu", dropout: float = 0.0,
                 kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.intermediate_dim = intermediate_dim
        self.activation = activation
        self.dropout_rate = dropout
        self.kernel_initializer = tf.keras.initializers.get(kernel_initializer)
        self.intermediate = self.dense_class(intermediate_dim, activation=get_activation(activation),
                                             kernel_initializer=clone_initializer(self.kernel_initializer),
                                             name="intermediate")
        self.output_dense = None
        self.dropout = tf.keras.layers.Dropout(dropout)

    def build(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        self.output_dense = self.dense_class(
            input_shape[-1], kernel_initializer=clone_initializer(self.kernel_initializer), name="output")
        with tf.name_scope(self.intermediate.name):
            self.intermediate.build(input_shape)
        with tf.name_scope(self.output_dense.name):
            self.output_dense.build(input_shape[:-1].concatenate([self.intermediate_dim]))
        super().build(input_shape)

    def call(self, inputs, *, training=None):
        hidden = self.intermediate(inputs)  # (B, L, F)
        return self.output_dense(self.dropout(hidden, training=training))  # (B, L, M)

    def get_prunable_weights(self):
        return [self.intermediate.kernel, self.output_dense.kernel]

    def get_config(self):
        return {**super().get_config(), "intermediate_dim": self.intermediate_dim, "activation": self.activation,
                "dropout": self.dropout_rate,
                "kernel_initializer": tf.keras.initializers.serialize(self.kernel_initializer)}
