"""Data: catalog, fetch, dataset dirs, splits."""
from moatkit.data.core import env as _env  # noqa: F401  (selects tf_keras before TensorFlow loads)
