"""Keras subclassed Transformer layers, one role per file (see DESIGN.md §3, §6)."""

from moatkit.models.layers.attention import MultiHeadAttention, scaled_dot_product_attention
from moatkit.models.layers.decoder_layer import DecoderLayer
from moatkit.models.layers.encoder_layer import EncoderLayer
from moatkit.models.layers.feed_forward import FeedForward
from moatkit.models.layers.position_embedding import LearnedPositionEmbedding, SinusoidalPositionEmbedding

__all__ = ["MultiHeadAttention", "scaled_dot_product_attention", "FeedForward", "EncoderLayer", "DecoderLayer",
           "SinusoidalPositionEmbedding", "LearnedPositionEmbedding"]
