"""moat-model-server request logging (model config `logging_config`) end to end."""

import glob

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2, prediction_service_pb2_grpc

from moatkit.serving.errors import ServingConfigError
from moatkit.serving import client
from moatkit.serving.model_manager import configs_from_text
from tests import serving_helpers as models

N_GRPC, N_REST, RATE = 150, 50, 0.5


def _config(base, prefix, rate=RATE, kind="file") -> str:
    return f"""
model_config_list {{
  config {{
    name: "text"
    base_path: "{base}"
    model_platform: "tensorflow"
    logging_config {{
      log_collector_config {{ type: "{kind}" filename_prefix: "{prefix}" }}
      sampling_config {{ sampling_rate: {rate} }}
    }}
  }}
}}
"""


def test_logging_config_is_validated():
    assert configs_from_text(_config("/m", "/logs/text"))[0].logging.sampling_rate == RATE
    with pytest.raises(ServingConfigError, match="unsupported log_collector_config type 'kafka'"):
        configs_from_text(_config("/m", "/logs/text", kind="kafka"))
    with pytest.raises(ServingConfigError, match="sampling_rate must be in"):
        configs_from_text(_config("/m", "/logs/text", rate=1.5))


def test_sampled_requests_are_logged_as_prediction_logs_that_replay(tmp_path):
    export = models.save_text_model(str(tmp_path / "export"), offset=0.0)
    base = tmp_path / "text"
    models.install_version({3: export}, str(base), 3)
    prefix = tmp_path / "logs" / "text"
    config = tmp_path / "models.config"
    config.write_text(_config(base, prefix))
    server = models.start_server(model_config_file=config, extra_flags=("--file_system_poll_wait_seconds=0",))
    try:
        channel = client.open_channel(server.grpc_address)
        sent = set()
        for i in range(N_GRPC):
            texts = [f"grpc request {i}"]
            sent.add(texts[0])
            client.grpc_predict(server.grpc_address, "text", {"text": np.array(texts, dtype=object)}, channel=channel)
        for i in range(N_REST):
            sent.add(f"rest request {i}")
            client.rest_predict(server.rest_address, "text", [f"rest request {i}"])

        (path,) = glob.glob(f"{prefix}.*.tfrecord")
        logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(path)]
        # Binomial(200, 0.5): mean 100, sd ~7.1; the bounds are > 5 sd away.
        assert 60 <= len(logs) <= 140, len(logs)
        texts = [log.predict_log.request.inputs["text"].string_val[0].decode() for log in logs]
        assert len(set(texts)) == len(texts) and set(texts) <= sent
        assert any(t.startswith("rest") for t in texts) and any(t.startswith("grpc") for t in texts)
        meta = logs[0].log_metadata
        assert (meta.model_spec.name, meta.model_spec.version.value, meta.model_spec.signature_name) == \
            ("text", 3, "serving_default")
        assert meta.sampling_config.sampling_rate == pytest.approx(RATE)
        assert list(meta.saved_model_tags) == ["serve"] and meta.timestamp_secs > 0
        assert all(log.WhichOneof("log_type") == "predict_log" for log in logs)

        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for origin in ("grpc", "rest"):  # a logged request replays to the logged response
            entry = next(log for log, text in zip(logs, texts) if text.startswith(origin)).predict_log
            replay = stub.Predict(entry.request, timeout=30)
            assert replay.model_spec.version.value == entry.response.model_spec.version.value == 3
            assert set(replay.outputs) == set(entry.response.outputs) == {"label", "probabilities"}
            for alias in replay.outputs:
                np.testing.assert_array_equal(tf.make_ndarray(replay.outputs[alias]),
                                              tf.make_ndarray(entry.response.outputs[alias]))
        channel.close()
    finally:
        server.stop()
