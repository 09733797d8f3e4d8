"""Serving: SavedModel export, the TF-Serving-compatible server, clients."""
from app import env as _env  # noqa: F401  (selects tf_keras before TensorFlow loads)
