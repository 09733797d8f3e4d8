
import os
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from moatkit.serving.model_manager import ModelConfig, ModelManager, configs_from_text
from moatkit.serving.tensors import ServingError
from tests.serving_helpers import expected_probs, install_version, make_broken_version, write_warmup


TEXTS = ["hi", "a much longer sentence"]


def _manager(base, **kwargs):
    kwargs.setdefault("poll_wait_seconds", 0)
    return ModelManager([ModelConfig(name="text", base_path=str(base))], **kwargs)


def _states(manager):
    return {s.version: (s.state, s.error_code) for s in manager.version_status("text")}


def _predict(manager, **spec):
    servable = manager.get_servable("text", **spec)
    return servable.version, servable.predict({"text": np.array(TEXTS, dtype=object)})


def test_loads_latest_and_predicts_like_the_saved_model(tmp_path, model_templates):
    install_version(model_templates, tmp_path, 1)
    install_version(model_templates, tmp_path, 2)
    manager = _manager(tmp_path)
    manager.start()
    assert _states(manager) == {2: ("AVAILABLE", "OK")}  # latest 1 by default
    version, out = _predict(manager)
    assert version == 2
    np.testing.assert_allclose(out["probabilities"], expected_probs(TEXTS, 1.0), atol=1e-6)
    direct = tf.saved_model.load(model_templates[2]).signatures["serving_default"](text=tf.constant(TEXTS))
    np.testing.assert_array_equal(out["probabilities"], direct["probabilities"].numpy())
    assert out["label"].tolist() == [b"long", b"long"]
    with pytest.raises(ServingError) as err:
        manager.get_servable("text", version=1)
    assert err.value.code == "NOT_FOUND"
    assert err.value.message == "Servable not found for request: Specific(text, 1)"
    with pytest.raises(ServingError, match=r"Latest\(other\)"):
        manager.get_servable("other")
    manager.stop()
    assert _states(manager) == {2: ("END", "OK")}


def test_transition_keeps_serving_and_broken_version_never_replaces_healthy(tmp_path, model_templates):
    install_version(model_templates, tmp_path, 1)
    manager = _manager(tmp_path)
    manager.start()
    failures, stop = [], threading.Event()

    def hammer():
        while not stop.is_set():
            try:
                _predict(manager)
            except Exception as err:  # any failure means availability was lost
                failures.append(err)

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        install_version(model_templates, tmp_path, 2)
        manager.reload_once()
        assert _states(manager) == {2: ("AVAILABLE", "OK"), 1: ("END", "OK")}
        make_broken_version(os.path.join(tmp_path, "3"))
        manager.reload_once()
    finally:
        stop.set()
        thread.join()
    assert failures == []
    status = manager.version_status("text")
    assert [s.version for s in status] == [3, 2, 1]  # newest first, like TF Serving
    assert status[0].state == "END" and status[0].error_code != "OK" and status[0].error_message
    assert status[1].state == "AVAILABLE"
    assert _predict(manager)[0] == 2
    manager.reload_once()  # an unchanged broken version is not retried
    assert manager.version_status("text", version=3)[0].error_message == status[0].error_message
    with pytest.raises(ServingError, match="Could not find version 9 of model text"):
        manager.version_status("text", version=9)


def test_polling_thread_picks_up_new_versions(tmp_path, model_templates):
    install_version(model_templates, tmp_path, 1)
    manager = _manager(tmp_path, poll_wait_seconds=0.2)
    manager.start()
    try:
        install_version(model_templates, tmp_path, 2)
        deadline = time.monotonic() + 60
        while manager.get_servable("text").version != 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert manager.get_servable("text").version == 2
    finally:
        manager.stop()


def test_warmup_replays_records_before_available(tmp_path, model_templates):
    target = install_version(model_templates, tmp_path, 1)
    write_warmup(target, [["a"], ["bb", "ccc"], ["dddd"]])
    manager = _manager(tmp_path)
    manager.start()
    assert manager.warmup_counts == {("text", 1): 3}
    assert _states(manager) == {1: ("AVAILABLE", "OK")}

    disabled = _manager(tmp_path, enable_warmup=False)
    disabled.start()
    assert disabled.warmup_counts == {}


def test_bad_warmup_record_fails_the_load(tmp_path, model_templates):
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    target = install_version(model_templates, tmp_path, 1)
    os.makedirs(os.path.join(target, "assets.extra"))
    request = predict_pb2.PredictRequest()
    request.inputs["wrong"].CopyFrom(tf.make_tensor_proto([1.0]))
    with tf.io.TFRecordWriter(os.path.join(target, "assets.extra", "tf_serving_warmup_requests")) as writer:
        writer.write(prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)).SerializeToString())
    manager = _manager(tmp_path)
    manager.start()
    [state] = manager.version_status("text")
    assert (state.state, state.error_code) == ("END", "INVALID_ARGUMENT")
    assert "Missing but required: {text}" in state.error_message


def test_config_file_policies_and_labels(tmp_path, model_templates):
    install_version(model_templates, tmp_path, 1)
    install_version(model_templates, tmp_path, 2)
    configs = configs_from_text(f"""
        model_config_list {{
          config {{ name: "text" base_path: "{tmp_path}" model_platform: "tensorflow"
                   model_version_policy {{ all {{}} }}
                   version_labels {{ key: "stable" value: 1 }} version_labels {{ key: "canary" value: 2 }} }}
          config {{ name: "pinned" base_path: "{tmp_path}"
                   model_version_policy {{ specific {{ versions: 1 }} }} }}
        }}""")
    manager = ModelManager(configs, poll_wait_seconds=0)
    manager.start()
    assert _states(manager) == {2: ("AVAILABLE", "OK"), 1: ("AVAILABLE", "OK")}
    assert manager.get_servable("text", label="stable").version == 1
    assert manager.get_servable("text", label="canary").version == 2
    assert manager.get_servable("pinned").version == 1
    with pytest.raises(ServingError, match="Unrecognized servable version label: beta") as err:
        manager.get_servable("text", label="beta")
    assert err.value.code == "INVALID_ARGUMENT"
    manager.reload_config([c for c in configs if c.name == "text"])
    with pytest.raises(ServingError):
        manager.get_servable("pinned")


def test_servable_errors(tmp_path, model_templates):
    install_version(model_templates, tmp_path, 1)
    manager = _manager(tmp_path)
    manager.start()
    servable = manager.get_servable("text")
    with pytest.raises(ServingError, match='Serving signature key "nope" not found.') as err:
        servable.predict({"text": np.array(["a"], dtype=object)}, signature_name="nope")
    assert err.value.code == "FAILED_PRECONDITION"
    with pytest.raises(ServingError, match="Missing but required: {text}"):
        servable.predict({"x": np.zeros(1, np.float32)})
    with pytest.raises(ServingError, match="output tensor alias not found in signature: nope"):
        servable.predict({"text": np.array(["a"], dtype=object)}, output_filter=("nope",))
    # Fed as TF Serving's session feeds it: another static shape is computed when the graph can (x is [None, 3])…
    wider = servable.predict({"x": np.full((1, 4), 3.0, np.float32), "scale": np.ones(1, np.float32)},
                             signature_name="numeric")
    np.testing.assert_allclose(wider["y"], [4.0])  # sum(x) * scale / 3 + offset 0
    # …and one it cannot compute fails in the graph with TensorFlow's message, as INVALID_ARGUMENT
    with pytest.raises(ServingError, match=r"Invalid reduction dimension \(1 for input with 1 dimension") as err:
        servable.predict({"x": np.zeros(4, np.float32), "scale": np.ones(1, np.float32)}, signature_name="numeric")
    assert err.value.code == "INVALID_ARGUMENT"
    only = servable.predict({"text": np.array(["a"], dtype=object)}, output_filter=("label",))
    assert set(only) == {"label"}
    example = tf.train.Example()
    example.features.feature["text"].bytes_list.value.append(b"abcdefg")
    [[(short, p_short), (long_, p_long)]] = servable.classify([example.SerializeToString()],
                                                               signature_name="classify")
    assert (short, long_) == ("short", "long")
    assert p_long == pytest.approx(0.5, abs=1e-6)
    assert servable.regress([example.SerializeToString()], signature_name="regress") == [7.0]
    # serving_default is a predict signature: TF Serving checks the method name only with
    # --enable_signature_method_name_check; without it the signature is tried and lacks classes/scores
    with pytest.raises(ServingError, match="outputs to contain classes or scores"):
        servable.classify([example.SerializeToString()])
    servable.check_method_names = True
    with pytest.raises(ServingError, match="Expected classification signature method_name") as err:
        servable.classify([example.SerializeToString()])
    assert err.value.code == "FAILED_PRECONDITION"


def test_routing_file_splits_unversioned_requests_by_label_exactly(tmp_path, model_templates):
    """moat_routing.json (the canary extension): unversioned inference requests go to `stable`, exactly
    canary_percent of them to `canary`; metadata/health lookups neither route nor count; a request naming a version
    or label is routed as TF Serving routes it; a label whose version is not loaded falls back to `stable`."""
    import json

    from moatkit.serving.routing import ROUTING_FILE

    install_version(model_templates, tmp_path, 1)
    install_version(model_templates, tmp_path, 2)
    config = ModelConfig(name="text", base_path=str(tmp_path), policy="specific", versions=(1, 2),
                         labels={"stable": 1, "canary": 2})
    manager = ModelManager([config], poll_wait_seconds=0)
    manager.start()
    routed = lambda: manager.get_servable("text", route=True).version  # noqa: E731
    assert routed() == 2  # TF Serving's rule without the file: the newest
    (tmp_path / ROUTING_FILE).write_text(json.dumps({"default_label": "stable", "canary_label": "canary",
                                                     "canary_percent": 10}))
    manager.reload_once()
    versions = []
    for _ in range(200):
        versions.append(routed())
        assert manager.get_servable("text").version == 2  # not an inference request: TF Serving's rule, no count
    assert versions.count(2) == 20 and versions.count(1) == 180
    assert all(manager.get_servable("text", label="stable", route=True).version == 1 for _ in range(5))
    assert manager.get_servable("text", version=2, route=True).version == 2
    for broken in ("{not json", "[]"):  # a broken rule is ignored (logged once), the last good one kept
        (tmp_path / ROUTING_FILE).write_text(broken)
        os.utime(tmp_path / ROUTING_FILE, (time.time() + 5, time.time() + 5))
        manager.reload_once()
        assert [routed() for _ in range(10)].count(2) == 1
    manager.reload_config([ModelConfig(name="text", base_path=str(tmp_path), policy="specific", versions=(1,),
                                       labels={"stable": 1, "canary": 2})])  # canary unloaded, label left behind
    assert {routed() for _ in range(30)} == {1}
    (tmp_path / ROUTING_FILE).unlink()
    manager.reload_once()
    assert routed() == 1
    manager.stop()
