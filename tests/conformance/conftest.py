"""Live-server fixtures for the conformance suite.

Every test that takes `server_kind` (directly or through `live`) runs against moat-model-server and, when
$TENSORFLOW_MODEL_SERVER names a tensorflow_model_server binary, against the real one with the same flags and
the same assertions: only behaviour both servers share is asserted on those.
"""
from __future__ import annotations


from dataclasses import dataclass

import grpc
import pytest
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from moatkit.serving.process import ServerProcess
from tests.serving_helpers import (MOAT, REAL, REAL_SERVER_ENV, copy_version, example_x, model_config,
                                   real_server_binary, save_half_plus, save_half_plus_tf1, start_server,
                                   write_warmup_logs)

KINDS = [MOAT, pytest.param(REAL, marks=pytest.mark.skipif(
    real_server_binary() is None, reason=f"${REAL_SERVER_ENV} does not name a tensorflow_model_server binary"))]

# TF Serving's testdata batching_config.txt: batching on, no added latency
BATCHING = """max_batch_size { value: 128 }
batch_timeout_micros { value: 0 }
max_enqueued_batches { value: 1000000 }
num_batch_threads { value: 8 }
"""
MONITORING = 'prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }\n'
WARMUP_RECORDS = 3


@pytest.fixture(scope="session", params=KINDS)
def server_kind(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def half_plus(tmp_path_factory) -> dict[str, str]:
    """SavedModels written once per session: TF2 half-plus-two / -three and a TF1 (graph + builder) half-plus-two."""
    root = tmp_path_factory.mktemp("half_plus")
    return {"two": save_half_plus(str(root / "two"), plus=2.0),
            "three": save_half_plus(str(root / "three"), plus=3.0),
            "two_tf1": save_half_plus_tf1(str(root / "two_tf1"), plus=2.0)}


def _warmup_logs():
    from tensorflow_serving.apis import (classification_pb2, predict_pb2, prediction_log_pb2,
                                         regression_pb2)
    import tensorflow as tf

    predict = predict_pb2.PredictRequest()
    predict.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0, 2.0], dtype=tf.float32))
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.signature_name = "classify_x_to_y"
    classify.input.example_list.examples.add().ParseFromString(example_x(2.0))
    regress = regression_pb2.RegressionRequest()
    regress.model_spec.signature_name = "regress_x_to_y"
    regress.input.example_list.examples.add().ParseFromString(example_x(2.0))
    log = prediction_log_pb2
    return [log.PredictionLog(predict_log=log.PredictLog(request=predict)),
            log.PredictionLog(classify_log=log.ClassifyLog(request=classify)),
            log.PredictionLog(regress_log=log.RegressLog(request=regress))]


@dataclass
class Live:
    kind: str
    server: ServerProcess
    rest: str
    grpc: str
    channel: grpc.Channel
    warmup_records: int = WARMUP_RECORDS  # replayed for `default` before it was served

    @property
    def predictions(self):
        return prediction_service_pb2_grpc.PredictionServiceStub(self.channel)

    @property
    def models(self):
        return model_service_pb2_grpc.ModelServiceStub(self.channel)


@pytest.fixture(scope="session")
def live(server_kind, half_plus, tmp_path_factory):
    """One server per kind for the whole session, serving (from a model config file, with batching, warmup and
    Prometheus on):  default = TF2 half-plus-two v123 (with 3 warmup records);  half_plus_two_tf1 = TF1 v123;
    half_plus_three = v123;  labelled = v123 (plus two) and v124 (plus three), labels stable -> 123, canary -> 124."""
    root = tmp_path_factory.mktemp(f"live_{server_kind}")
    copy_version(half_plus["two"], root / "default", 123)
    write_warmup_logs(str(root / "default" / "123"), _warmup_logs())
    copy_version(half_plus["two_tf1"], root / "half_plus_two_tf1", 123)
    copy_version(half_plus["three"], root / "half_plus_three", 123)
    copy_version(half_plus["two"], root / "labelled", 123)
    copy_version(half_plus["three"], root / "labelled", 124)
    labels = ('    model_version_policy { all {} }\n'
              '    version_labels { key: "stable" value: 123 }\n    version_labels { key: "canary" value: 124 }\n')
    config = root / "models.config"
    config.write_text(model_config([("default", root / "default", ""),
                                    ("half_plus_two_tf1", root / "half_plus_two_tf1", ""),
                                    ("half_plus_three", root / "half_plus_three", ""),
                                    ("labelled", root / "labelled", labels)]))
    (root / "batching.config").write_text(BATCHING)
    (root / "monitoring.config").write_text(MONITORING)
    server = start_server(server_kind, model_config_file=config, extra_flags=(
        "--enable_batching", f"--batching_parameters_file={root / 'batching.config'}",
        f"--monitoring_config_file={root / 'monitoring.config'}"))
    channel = grpc.insecure_channel(server.grpc_address)
    try:
        yield Live(server_kind, server, server.rest_address, server.grpc_address, channel)
    finally:
        channel.close()
        server.stop()
