"""Keras subclassed Transformer layers, one role per file (see DESIGN.md §3, §6)."""
from app import env as _env  # noqa: F401

from models.layers.attention import MultiHeadAttention, scaled_dot_product_attention
from models.layers.decoder_layer import DecoderLayer
from models.layers.encoder_layer import EncoderLayer
from models.layers.feed_forward import FeedForward
from models.layers.position_embedding import LearnedPositionEmbedding, SinusoidalPositionEmbedding

__all__ = ["MultiHeadAttention", "scaled_dot_product_attention", "FeedForward", "EncoderLayer", "DecoderLayer",
           "SinusoidalPositionEmbedding", "LearnedPositionEmbedding"]
