"""Availability-preserving version transitions under load: 16 clients (8 REST, 8 gRPC) keep predicting for 12 s
while version 2 (half-plus-three) appears beside version 1 (half-plus-two) under the latest-version policy;
no request fails and answers switch to version 2. Then a corrupt version 3 appears: version 2 keeps serving and
GetModelStatus reports version 3's load failure."""

import os
import shutil
import threading
import time

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (get_model_status_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from tests.serving_helpers import http, make_broken_version, start_server, wait_for

CLIENTS, DURATION_S, SWAP_AT_S = 16, 12.0, 3.0  # version 2 lands ~1 s after the swap
V1, V2 = 3.0, 4.0  # y at x = 2: half plus two, half plus three


def _publish(source_dir: str | None, base, version: int) -> None:
    """Copies a version next to the base path, then renames it in: the poller never sees a half-copied dir."""
    staging = base.parent / f".staging-{version}"
    if source_dir is None:
        make_broken_version(str(staging))
    else:
        shutil.copytree(source_dir, staging)
    os.rename(staging, base / str(version))


def _status(channel) -> dict[int, tuple[str, int, str]]:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "swap"
    reply = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=30)
    state_name = get_model_status_pb2.ModelVersionStatus.State.Name
    return {s.version: (state_name(s.state), s.status.error_code, s.status.error_message)
            for s in reply.model_version_status}


def test_hot_swap_under_load_then_corrupt_version(server_kind, half_plus, tmp_path):
    base = tmp_path / "models" / "swap"
    base.mkdir(parents=True)
    _publish(half_plus["two"], base, 1)
    server = start_server(server_kind, model_name="swap", model_base_path=base, extra_flags=(
        "--file_system_poll_wait_seconds=1", "--max_num_load_retries=0"))
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "swap"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([2.0], np.float32)))
    answers: list[tuple[float, str, float, int | None]] = []  # (time, api, y, version)
    failures: list[str] = []
    lock, stop = threading.Lock(), threading.Event()
    started = time.monotonic()

    def rest_client():
        while not stop.is_set():
            try:
                status, body = http(server.rest_address, "POST", "/v1/models/swap:predict", {"instances": [2.0]})
                if status != 200:
                    raise RuntimeError(f"HTTP {status}: {body}")
                with lock:
                    answers.append((time.monotonic() - started, "rest", body["predictions"][0], None))
            except Exception as err:  # noqa: BLE001  (every failure is a lost request)
                failures.append(f"rest: {err}")

    def grpc_client():
        with grpc.insecure_channel(server.grpc_address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            while not stop.is_set():
                try:
                    reply = stub.Predict(request, timeout=30)
                    with lock:
                        answers.append((time.monotonic() - started, "grpc",
                                        tf.make_ndarray(reply.outputs["y"])[0], reply.model_spec.version.value))
                except Exception as err:  # noqa: BLE001
                    failures.append(f"grpc: {err}")

    threads = [threading.Thread(target=rest_client if i % 2 else grpc_client) for i in range(CLIENTS)]
    channel = grpc.insecure_channel(server.grpc_address)
    try:
        for thread in threads:
            thread.start()
        time.sleep(SWAP_AT_S)
        _publish(half_plus["three"], base, 2)
        swapped = wait_for(lambda: _status(channel).get(1, ("",))[0] == "END" and _status(channel),
                           timeout=DURATION_S, what="version 1 to be retired")
        time.sleep(max(0.0, DURATION_S - (time.monotonic() - started)))
        stop.set()
        for thread in threads:
            thread.join(60)
        assert failures == [], failures[:5]
        assert swapped[2][0] == "AVAILABLE"
        assert {y for _, _, y, _ in answers} == {V1, V2}
        first_v2 = min(t for t, _, y, _ in answers if y == V2)
        assert all(y == V2 for t, _, y, _ in answers if t > first_v2 + 3.0)  # no flapping back once retired
        assert {v for _, api, y, v in answers if api == "grpc"} == {1, 2}
        assert all((y, v) in ((V1, 1), (V2, 2)) for _, api, y, v in answers if api == "grpc")
        assert {api for _, api, y, _ in answers if y == V2} == {"rest", "grpc"}
        assert len(answers) > 100

        _publish(None, base, 3)  # a corrupt version 3
        status = wait_for(lambda: (lambda s: 3 in s and s[3][0] == "END" and s)(_status(channel)), timeout=60,
                          what="version 3 to fail")
        assert status[3][1] != 0 and status[3][2]  # a non-OK code and a message
        assert status[2][0] == "AVAILABLE"
        assert http(server.rest_address, "POST", "/v1/models/swap:predict", {"instances": [2.0]}) == \
            (200, {"predictions": [V2]})
        reply = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
        assert reply.model_spec.version.value == 2
        print(f"\nhot swap ({server_kind}): {len(answers)} answers in {DURATION_S:.0f}s, "
              f"first version-2 answer at {first_v2:.1f}s, version 3 error: {status[3][2][:120]}")
    finally:
        stop.set()
        channel.close()
        server.stop()
