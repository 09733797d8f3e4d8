"""The one place that selects the Keras implementation and quiets TensorFlow's native logging.

TFMOT and Hugging Face's TF classes need Keras 2 (`tf_keras`); TensorFlow decides which Keras `tf.keras`
means at import time, so this must run before anything imports TensorFlow. Every package but serving/ (which
uses no Keras) imports it from its __init__.
"""
import atexit
import os
import re
import sys
import threading

USER_TF_LOG_LEVEL = os.environ.get("TF_CPP_MIN_LOG_LEVEL")  # as the user set it, before the default below
os.environ["TF_USE_LEGACY_KERAS"] = "1"  # forced: Keras 3 breaks TFMOT and HF TF classes
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep CLI output readable; users can lower it
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from registry packages, never from a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

# absl's C++ log lines ("I0000 00:00:1796587168.324344    8550 port.cc:153] oneDNN custom operations are on…",
# "E… cuda_platform.cc:52] failed call to cuInit…") and its preamble. TensorFlow 2.21 writes them before and
# regardless of TF_CPP_MIN_LOG_LEVEL, so the only way to keep them off a terminal is to filter the stream.
NATIVE_LOG_LINE = re.compile(rb"^(?:[IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [\w.\-]+:\d+\] |WARNING: All log messages "
                             rb"before absl::InitializeLog\(\) is called are written to STDERR)")
NATIVE_LOG_CONTINUATION = re.compile(rb"^To enable the following instructions: ")
_TEXT_PREFIXES = (b"WARNING: All log messages", b"To enable the following instructions")


def _may_begin_native_line(piece: bytes) -> bool:
    """Whether an unfinished piece of output could still turn out to be a native log line."""
    return bool(re.match(rb"[IWEF](?:\d|$)", piece)) or any(
        prefix.startswith(piece[:len(prefix)]) for prefix in _TEXT_PREFIXES)


_filtering = False


def filter_native_logs() -> None:
    """Drops TensorFlow's C++ log lines from this process's stderr (file descriptor 2, so child processes too)
    unless the user asked for them with TF_CPP_MIN_LOG_LEVEL below 2. Everything else passes unchanged."""
    global _filtering
    if USER_TF_LOG_LEVEL not in (None, "", "2", "3") or _filtering:
        return  # once per process: `main()` called again (tests, notebooks) must not stack pipes and threads
    _filtering = True
    read_end, write_end = os.pipe()
    terminal = os.dup(2)
    sys.stderr.flush()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward():
        # Chunks, not lines: a progress bar (tqdm) redraws with '\r' and must not wait for a newline. Only a piece
        # that could begin a log line is held back until its end arrives.
        pending = b""
        while chunk := os.read(read_end, 65536):
            pieces = re.split(rb"(?<=[\r\n])", pending + chunk)
            pending = pieces.pop()
            if pending and not _may_begin_native_line(pending):
                pieces.append(pending)
                pending = b""
            os.write(terminal, b"".join(p for p in pieces if not NATIVE_LOG_LINE.match(p)
                                        and not NATIVE_LOG_CONTINUATION.match(p)))
        os.write(terminal, pending)
        os.close(read_end)

    thread = threading.Thread(target=forward, name="moat-stderr-filter", daemon=True)
    thread.start()

    def restore():  # hand fd 2 back so the forwarder sees end-of-file and writes out what is left
        sys.stderr.flush()
        os.dup2(terminal, 2)
        thread.join(timeout=2)

    atexit.register(restore)
