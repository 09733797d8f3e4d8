"""moatkit application layer: the `moat` CLI, configs and the end-to-end pipeline."""
from moatkit.data.core import env as _env  # noqa: F401  (must precede any TensorFlow import)
