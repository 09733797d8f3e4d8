"""Models: checkpoint conversion, fine-tuning, evaluation."""
from moatkit.data.core import env as _env  # noqa: F401  (selects tf_keras before TensorFlow loads)
