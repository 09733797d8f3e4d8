"""Serving: the TF-Serving-compatible server (model manager, gRPC, REST, batching, request logs), clients.

It serves SavedModels and .tflite files and imports nothing from models/, data/ or app/. It uses no Keras, so
of the environment that moatkit.data.core.env sets it needs only TensorFlow's C++ log level.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
