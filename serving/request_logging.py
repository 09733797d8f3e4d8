"""Per-model request logging, configured like TF Serving's `logging_config` inside a model's config:

    config {
      name: "text" base_path: "/models/text"
      logging_config {
        log_collector_config { type: "file" filename_prefix: "/logs/text" }
        sampling_config { sampling_rate: 0.1 }
      }
    }

Each sampled Predict/Classify/Regress request (gRPC, or REST converted to the matching request proto) is
written with its response as one tensorflow.serving.PredictionLog record (log_metadata: model spec with the
served version and signature, sampling config, saved_model_tags, timestamp) to the TFRecord file
`<filename_prefix>.<pid>.<start time ms>.tfrecord`, flushed after every record. Records have the warmup-file
format, so a log can be replayed (or used as assets.extra/tf_serving_warmup_requests). TF Serving's open-source
build registers no collector; "file" is the one collector type implemented here, any other is a config error.
"""
from __future__ import annotations


import logging
import os
import random
import threading
import time
from dataclasses import dataclass

log = logging.getLogger("moat.serving")


@dataclass(frozen=True)
class LoggingSettings:
    filename_prefix: str
    sampling_rate: float


class RequestLogger:
    def __init__(self, model: str, settings: LoggingSettings, *, seed: int | None = None):
        import tensorflow as tf

        self.model, self.settings = model, settings
        self.path = f"{settings.filename_prefix}.{os.getpid()}.{int(time.time() * 1000)}.tfrecord"
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._writer = tf.io.TFRecordWriter(self.path)
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.logged = 0
        log.info("Logging %.3g of the requests to model %s in %s", settings.sampling_rate, model, self.path)

    def sample(self) -> bool:
        with self._lock:
            return self._random.random() < self.settings.sampling_rate

    def write(self, kind: str, request, response, *, version: int, signature_name: str) -> None:
        """kind: predict_log | classify_log | regress_log."""
        from tensorflow_serving.apis import prediction_log_pb2

        entry = prediction_log_pb2.PredictionLog()
        meta = entry.log_metadata
        meta.model_spec.name = self.model
        meta.model_spec.version.value = version
        meta.model_spec.signature_name = signature_name
        meta.sampling_config.sampling_rate = self.settings.sampling_rate
        meta.saved_model_tags.append("serve")
        meta.timestamp_secs = int(time.time())
        getattr(entry, kind).request.CopyFrom(request)
        getattr(entry, kind).response.CopyFrom(response)
        with self._lock:
            if self._writer is None:
                return
            self._writer.write(entry.SerializeToString())
            self._writer.flush()
            self.logged += 1

    def close(self) -> None:
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None


def settings_from_proto(model_name: str, logging_config, *, source: str) -> LoggingSettings | None:
    """The LoggingSettings of a ModelConfig.logging_config (None when absent)."""
    from moatkit.serving.errors import ServingConfigError

    collector = logging_config.log_collector_config
    if not collector.type and not collector.filename_prefix:
        return None
    if collector.type != "file":
        raise ServingConfigError(f"{source}: model {model_name!r}: unsupported log_collector_config type "
                          f"{collector.type!r}", fix='use type: "file" with a filename_prefix')
    if not collector.filename_prefix:
        raise ServingConfigError(f"{source}: model {model_name!r}: log_collector_config needs a filename_prefix")
    rate = logging_config.sampling_config.sampling_rate
    if not 0.0 <= rate <= 1.0:
        raise ServingConfigError(f"{source}: model {model_name!r}: sampling_rate must be in [0, 1], got {rate}")
    return LoggingSettings(filename_prefix=collector.filename_prefix, sampling_rate=rate)
