"""The one place that selects the Keras implementation.

TFMOT and Hugging Face's TF classes need Keras 2 (`tf_keras`); TensorFlow decides which Keras `tf.keras`
means at import time, so this must run before anything imports TensorFlow. Every top-level package imports it.
"""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # forced: Keras 3 breaks TFMOT and HF TF classes
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep CLI output readable; users can lower it
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from registry packages, never from a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
