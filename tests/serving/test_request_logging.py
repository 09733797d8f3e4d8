"""Request logging in-process: REST :classify/:regress/:predict calls logged as the matching request protos."""

import glob
import json

import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from moatkit.serving.grpc_service import PredictionService
from moatkit.serving.model_manager import ModelManager, configs_from_text
from moatkit.serving.rest import RestApi

from tests import serving_helpers as _models



def _manager(tmp_path, model_templates, rate: float) -> ModelManager:
    base = tmp_path / "m"
    _models.install_version(model_templates, str(base), 1)
    configs = configs_from_text(f"""model_config_list {{ config {{
        name: "m" base_path: "{base}" model_platform: "tensorflow"
        version_labels {{ key: "stable" value: 1 }}
        logging_config {{ log_collector_config {{ type: "file" filename_prefix: "{tmp_path}/logs/m" }}
                          sampling_config {{ sampling_rate: {rate} }} }} }} }}""")
    manager = ModelManager(configs, poll_wait_seconds=0)
    manager.start()
    return manager


def _read_logs(tmp_path) -> list:
    (path,) = glob.glob(f"{tmp_path}/logs/m.*.tfrecord")
    return [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(path)]


def test_rest_calls_are_logged_and_replay_through_grpc(tmp_path, model_templates):
    manager = _manager(tmp_path, model_templates, 1.0)
    api = RestApi(manager)
    try:
        calls = [("/v1/models/m/labels/stable:classify", {"signature_name": "classify",
                                                          "examples": [{"text": "abcdefg"}, {"text": "ab"}]}),
                 ("/v1/models/m:regress", {"signature_name": "regress", "context": {"text": "abc"},
                                           "examples": [{}, {"text": "ab"}]}),
                 ("/v1/models/m/versions/1:predict", {"instances": ["hi", "there"]})]
        for path, body in calls:
            status, _, text = api.handle("POST", path, json.dumps(body).encode())
            assert status == 200, text
        assert api.handle("POST", "/v1/models/m:predict", b'{"instances": [1]}')[0] == 400  # errors: not logged
        logs = _read_logs(tmp_path)
    finally:
        api.close()
        manager.stop()
    assert [log.WhichOneof("log_type") for log in logs] == ["classify_log", "regress_log", "predict_log"]
    classify, regress, predict = (getattr(log, log.WhichOneof("log_type")) for log in logs)
    assert classify.request.model_spec.version_label == "stable"
    assert [e.features.feature["text"].bytes_list.value[0] for e in classify.request.input.example_list.examples] \
        == [b"abcdefg", b"ab"]
    assert [r.value for r in regress.response.result.regressions] == [3.0, 2.0]
    assert predict.request.model_spec.version.value == 1
    assert list(predict.request.inputs["text"].string_val) == [b"hi", b"there"]
    assert all(log.log_metadata.model_spec.version.value == 1 for log in logs)

    replay_manager = _manager(tmp_path / "replay", model_templates, 0.0)  # rate 0: nothing is logged
    try:
        service = PredictionService(replay_manager)
        assert service.Classify(classify.request, None) == classify.response
        assert service.Regress(regress.request, None) == regress.response
        assert service.Predict(predict.request, None) == predict.response
        assert _read_logs(tmp_path / "replay") == []
    finally:
        replay_manager.stop()
