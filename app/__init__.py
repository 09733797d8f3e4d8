"""moatkit application layer: the `moat` CLI, configs and the end-to-end pipeline."""
from app import env as _env  # noqa: F401  (must precede any TensorFlow import)
