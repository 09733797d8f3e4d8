"""serving/batching.py: BatchingParameters parsing and the batch scheduler (merge, pad, split, errors, overflow),
plus tensorflow_model_server-style flag parsing."""

import threading
import time

import numpy as np
import pytest

from moatkit.serving.errors import ServingConfigError
from moatkit.serving import batching
from moatkit.serving.batching import BatchingParameters, BatchScheduler, parse_batching_parameters
from moatkit.serving.model_manager import ModelManager
from moatkit.serving.server import FlagError, parse_flags
from moatkit.serving.tensors import ServingError

from tests import serving_helpers as _models

install_version = _models.install_version


# === BatchingParameters text format ===

def test_parses_tf_serving_batching_parameters_text():
    params = parse_batching_parameters("""
        # as in TF Serving's serving_config.md
        max_batch_size { value: 8 }
        batch_timeout_micros { value: 5000 }
        max_enqueued_batches { value: 100 }
        num_batch_threads { value: 2 }
        allowed_batch_sizes: 2
        allowed_batch_sizes: 4
        allowed_batch_sizes: 8
        pad_variable_length_inputs: true
    """)
    assert params == BatchingParameters(max_batch_size=8, batch_timeout_micros=5000, num_batch_threads=2,
                                        max_enqueued_batches=100, allowed_batch_sizes=(2, 4, 8),
                                        pad_variable_length_inputs=True)
    assert parse_batching_parameters("") == BatchingParameters(1000, 0, 4, 10, (), False)
    assert batching.batching_parameters_class().DESCRIPTOR.full_name == "tensorflow.serving.BatchingParameters"


@pytest.mark.parametrize("text, fragment", [
    ("max_batch_size: 8", "not a text-format BatchingParameters"),
    ("max_batch_sise { value: 8 }", 'has no field named "max_batch_sise"'),
    ("max_batch_size { value: 8 } allowed_batch_sizes: 4 allowed_batch_sizes: 2",
     "allowed_batch_sizes entries must be monotonically increasing"),
    ("max_batch_size { value: 8 } allowed_batch_sizes: 2 allowed_batch_sizes: 4",
     "final entry in allowed_batch_sizes must equal max_batch_size"),
    ("num_batch_threads { value: 0 }", "num_batch_threads must be positive, got 0"),
])
def test_rejects_bad_batching_parameters(text, fragment):
    with pytest.raises(ServingConfigError) as err:
        parse_batching_parameters(text, source="b.config")
    assert fragment in str(err.value) and str(err.value).startswith("b.config: ")


# === Scheduler ===

class Recorder:
    """A fake signature: y = 10 * x (+ row sum over dims 1.. for rank-2 input); records every call."""

    def __init__(self, gate: threading.Event | None = None, fail_on=None):
        self.calls: list[dict] = []
        self.gate, self.fail_on = gate, fail_on
        self.lock = threading.Lock()

    def __call__(self, feeds):
        if self.gate is not None:
            self.gate.wait(10)
        with self.lock:
            self.calls.append({k: v.copy() for k, v in feeds.items()})
        x = feeds["x"]
        if self.fail_on is not None and (x == self.fail_on).any():
            raise ServingError("INVALID_ARGUMENT", f"bad value {self.fail_on}")
        y = x * 10 if x.ndim == 1 else x.sum(axis=tuple(range(1, x.ndim))) * 10
        return {"y": y, "n": np.full(x.shape[0], x.shape[0])}


def _concurrently(fn, args_list):
    results = [None] * len(args_list)

    def run(i):
        try:
            results[i] = fn(*args_list[i])
        except Exception as err:  # noqa: BLE001
            results[i] = err
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(args_list))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def test_concurrent_tasks_merge_into_one_call_and_split_back():
    scheduler = BatchScheduler(BatchingParameters(max_batch_size=16, batch_timeout_micros=300_000,
                                                  num_batch_threads=1))
    run = Recorder()
    try:
        inputs = [np.array([i, i + 0.5], dtype=np.float32) for i in range(5)]
        results = _concurrently(lambda x: scheduler.submit("q", run, {"x": x}, model="m"), [(x,) for x in inputs])
    finally:
        scheduler.stop()
    assert len(run.calls) == 1 and run.calls[0]["x"].shape == (10,)
    for x, result in zip(inputs, results):
        np.testing.assert_array_equal(result["y"], x * 10)
        assert result["n"].tolist() == [10, 10]
    text = scheduler.prometheus_text()
    assert ':tensorflow:serving:batching_session:processed_batch_size_count{model_name="m"} 1' in text
    assert ':tensorflow:serving:batching_session:input_batch_size_count{model_name="m"} 5' in text
    assert ':tensorflow:serving:batching_session:input_batch_size_sum{model_name="m"} 10' in text


def test_allowed_batch_sizes_pad_with_first_row_and_drop_padding():
    scheduler = BatchScheduler(BatchingParameters(max_batch_size=8, batch_timeout_micros=300_000,
                                                  num_batch_threads=1, allowed_batch_sizes=(4, 8)))
    run = Recorder()
    try:
        inputs = [np.array([1.0, 2.0], dtype=np.float32), np.array([3.0, 4.0, 5.0], dtype=np.float32)]
        results = _concurrently(lambda x: scheduler.submit("q", run, {"x": x}), [(x,) for x in inputs])
    finally:
        scheduler.stop()
    assert len(run.calls) == 1
    merged = run.calls[0]["x"]
    assert merged.shape == (8,)  # 5 rows padded to the next allowed size
    assert sorted(merged[:5].tolist()) == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert merged[5:].tolist() == [merged[0]] * 3
    for x, result in zip(inputs, results):
        np.testing.assert_array_equal(result["y"], x * 10)
        assert result["n"].tolist() == [8] * len(x)
    assert 'padding_size_sum{model_name=""} 3' in scheduler.prometheus_text()


def test_variable_length_inputs_padded_or_run_apart():
    a = np.array([[1, 2, 3]], dtype=np.int64)
    b = np.array([[4, 5]], dtype=np.int64)
    for pad, calls in ((True, 1), (False, 2)):
        scheduler = BatchScheduler(BatchingParameters(max_batch_size=8, batch_timeout_micros=300_000,
                                                      num_batch_threads=1, pad_variable_length_inputs=pad))
        run = Recorder()
        try:
            results = _concurrently(lambda x: scheduler.submit("q", run, {"x": x}), [(a,), (b,)])
        finally:
            scheduler.stop()
        assert len(run.calls) == calls, pad
        assert results[0]["y"].tolist() == [60]
        # padded with the tensor's first element (4): [4, 5, 4] -> 13
        assert results[1]["y"].tolist() == ([130] if pad else [90])


def test_an_error_reaches_only_the_request_that_caused_it():
    scheduler = BatchScheduler(BatchingParameters(max_batch_size=8, batch_timeout_micros=300_000,
                                                  num_batch_threads=1))
    run = Recorder(fail_on=13.0)
    try:
        inputs = [np.array([1.0], np.float32), np.array([13.0], np.float32), np.array([2.0], np.float32)]
        results = _concurrently(lambda x: scheduler.submit("q", run, {"x": x}), [(x,) for x in inputs])
    finally:
        scheduler.stop()
    assert results[0]["y"].tolist() == [10.0] and results[2]["y"].tolist() == [20.0]
    assert isinstance(results[1], ServingError) and results[1].code == "INVALID_ARGUMENT"
    assert results[1].message == "bad value 13.0"
    assert len(run.calls) == 4  # the merged call, then one per request


def test_queue_overflow_is_unavailable_and_oversized_task_is_invalid():
    gate = threading.Event()
    scheduler = BatchScheduler(BatchingParameters(max_batch_size=2, batch_timeout_micros=0,
                                                  num_batch_threads=1, max_enqueued_batches=1))
    run = Recorder(gate=gate)
    results = []
    try:
        one = np.array([1.0, 2.0], np.float32)
        first = threading.Thread(target=lambda: results.append(scheduler.submit("q", run, {"x": one})))
        first.start()  # taken by the only batch thread, which blocks on the gate
        deadline = time.monotonic() + 10
        while scheduler._queues and time.monotonic() < deadline:
            time.sleep(0.01)
        second = threading.Thread(target=lambda: results.append(scheduler.submit("q", run, {"x": one})))
        second.start()  # fills the one allowed enqueued batch
        while not scheduler._queues and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(ServingError) as err:
            scheduler.submit("q", run, {"x": one})
        assert (err.value.code, err.value.message) == ("UNAVAILABLE", batching.QUEUE_FULL)
        with pytest.raises(ServingError) as err:
            scheduler.submit("other", run, {"x": np.zeros(3, np.float32)})
        assert err.value.message == "Task size 3 is larger than maximum input batch size 2"
        with pytest.raises(ServingError) as err:
            scheduler.submit("other", run, {"x": np.zeros(1), "z": np.zeros(2)})
        assert err.value.message == "Batching session Run() input tensors must have equal 0th-dimension size"
        gate.set()
        first.join(10)
        second.join(10)
    finally:
        gate.set()
        scheduler.stop()
    assert len(results) == 2 and len(run.calls) == 2


def test_batched_servable_matches_unbatched_and_calls_signature_less(tmp_path, model_templates):
    install_version(model_templates, str(tmp_path / "m"), 1)
    from moatkit.serving.model_manager import ModelConfig

    config = [ModelConfig(name="m", base_path=str(tmp_path / "m"))]
    plain = ModelManager(config, poll_wait_seconds=0)
    plain.start()
    scheduler = BatchScheduler(BatchingParameters(max_batch_size=32, batch_timeout_micros=200_000,
                                                  num_batch_threads=1))
    batched = ModelManager(config, poll_wait_seconds=0, batcher=scheduler)
    batched.start()
    try:
        texts = [["a"], ["bb", "a much longer text"], [b"bytes", "mixed"], ["x" * 30]]
        expected = [plain.get_servable("m").predict({"text": np.array(t, dtype=object)}) for t in texts]
        servable = batched.get_servable("m")
        got = _concurrently(lambda t: servable.predict({"text": np.array(t)}), [(t,) for t in texts])
        for want, have in zip(expected, got):
            np.testing.assert_array_equal(have["probabilities"], want["probabilities"])
            assert have["label"].tolist() == want["label"].tolist()
        assert servable.signature_calls["serving_default"] == 1
        numeric = _concurrently(lambda x, s: servable.predict({"x": x, "scale": s}, signature_name="numeric",
                                                               output_filter=("y",)),
                                [(np.ones((2, 3), np.float32), np.array([1, 2], np.float32)),
                                 (np.full((1, 3), 3, np.float32), np.array([1], np.float32))])
        assert [r["y"].tolist() for r in numeric] == [[1.0, 2.0], [3.0]]
        assert servable.signature_calls["numeric"] == 1
    finally:
        plain.stop()
        batched.stop()
        scheduler.stop()


# === Flags ===

def test_flags_accept_equals_space_single_dash_and_booleans():
    options = parse_flags(["--port", "9000", "-rest_api_port=8501", "--enable_batching", "--model_name", "m",
                           "--noenable_model_warmup", "--flush_filesystem_caches", "false",
                           "--batching_parameters_file=/b.config", "--rest_api_timeout_in_ms", "-1"])
    assert (options.port, options.rest_api_port, options.model_name) == (9000, 8501, "m")
    assert (options.enable_batching, options.enable_model_warmup, options.flush_filesystem_caches) == \
        (True, False, False)
    assert options.batching_parameters_file == "/b.config" and options.rest_api_timeout_in_ms == -1
    assert parse_flags(["--enable_batching=false"]).enable_batching is False
    assert parse_flags(["--enable_batching=true", "--port=1"]).values["enable_batching"] is True
    assert parse_flags(["--enable_batching", "--port=1"]).port == 1
    assert parse_flags([]).port == 8500


@pytest.mark.parametrize("argv, message", [
    (["--bogus", "1"], "unknown command line flag 'bogus'"),
    (["--port"], "--port: missing value"),
    (["--port", "--rest_api_port=1"], "--port: missing value"),
    (["--port", "x"], "--port=x: expected int"),
    (["--enable_batching=maybe"], "--enable_batching=maybe: not a boolean"),
    (["--enable_batching", "maybe"], "unexpected argument 'maybe'"),
    (["model_dir"], "unexpected argument 'model_dir'"),
])
def test_bad_flags(argv, message):
    with pytest.raises(FlagError) as err:
        parse_flags(argv)
    assert err.value.message == message
