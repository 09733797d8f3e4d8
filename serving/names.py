"""Model-name rule shared by the flag check and the config parser (no TensorFlow import: flags are checked first)."""
import re

_SAFE_NAME = re.compile(r"[^/\\\x00-\x1f\x7f]+")  # names travel in URLs and log paths, never as directories


def is_safe_model_name(name: str) -> bool:
    return bool(_SAFE_NAME.fullmatch(name)) and name not in (".", "..")
