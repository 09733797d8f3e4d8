"""Data: catalog, fetch, dataset dirs, splits."""
from app import env as _env  # noqa: F401  (selects tf_keras before TensorFlow loads)
