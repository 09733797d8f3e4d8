"""--model_config_file handling, as in TF Serving's testGoodModelConfig / testBadModelConfig /
testModelConfigReload: several models from one file, a malformed file stops the server with protobuf's parse
message, and a rewritten file is picked up after --model_config_file_poll_wait_seconds."""

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (model_management_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from moatkit.serving.errors import ServerError
from tests.serving_helpers import copy_version, make_server, model_config, start_server, wait_for


def _predict(channel, model: str, x: float = 2.0):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([x], np.float32)))
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    return response.model_spec.version.value, tf.make_ndarray(response.outputs["y"]).tolist()


def test_bad_model_config_stops_the_server(server_kind, tmp_path):
    config = tmp_path / "bad_model_config.txt"
    config.write_text("improperly formatted file\n")
    server = make_server(server_kind, model_config_file=config, timeout=120)
    with pytest.raises(ServerError, match="did not start"):
        server.start()
    assert server.process.returncode != 0
    assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in server.output()


def test_config_reload_after_poll(server_kind, half_plus, tmp_path):
    copy_version(half_plus["two"], tmp_path / "half_plus_two", 123)
    copy_version(half_plus["three"], tmp_path / "half_plus_three", 123)
    config = tmp_path / "model_config.txt"
    config.write_text(model_config([("half_plus_two", tmp_path / "half_plus_two", "")]))
    server = start_server(server_kind, model_config_file=config,
                          extra_flags=("--model_config_file_poll_wait_seconds=1",))
    channel = grpc.insecure_channel(server.grpc_address)
    try:
        assert _predict(channel, "half_plus_two") == (123, [3.0])
        config.write_text(model_config([("half_plus_three", tmp_path / "half_plus_three", "")]))
        assert wait_for(lambda: _predict(channel, "half_plus_three"), timeout=60,
                        what="half_plus_three after the config poll") == (123, [4.0])

        def gone():
            try:
                _predict(channel, "half_plus_two")
            except grpc.RpcError as err:
                return err.code() == grpc.StatusCode.NOT_FOUND
        wait_for(gone, timeout=60, what="half_plus_two to be unloaded")

        # ModelService.HandleReloadConfigRequest: the gRPC way to change the model list
        reload = model_management_pb2.ReloadConfigRequest()
        for name in ("half_plus_two", "half_plus_three"):
            reload.config.model_config_list.config.add(name=name, base_path=str(tmp_path / name),
                                                       model_platform="tensorflow")
        reply = model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(reload, timeout=120)
        assert reply.status.error_code == 0
        assert wait_for(lambda: _predict(channel, "half_plus_two"), timeout=60) == (123, [3.0])
        assert _predict(channel, "half_plus_three") == (123, [4.0])
    finally:
        channel.close()
        server.stop()
