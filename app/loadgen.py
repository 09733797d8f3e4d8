"""Closed-loop load generator for TF Serving endpoints: N client threads, each with its own long-lived connection
(REST: one keep-alive http.client connection; gRPC: one channel and stub), each sending its next request as soon as
the previous answer arrives, for a fixed time. Used by `moat bench` (serving section) and usable on its own:

    result = run_load(grpc_client("127.0.0.1:8500", "sentiment", {"text": ["a fine film"]}), clients=8, seconds=3)
    result.summary()  # {"clients": 8, "requests": ..., "req_per_s": ..., "p50_ms": ..., "p99_ms": ..., "errors": 0}

Requests are serialized once per client (JSON body bytes, PredictRequest proto), so the generator spends its CPU on
sending and receiving, which matters when it shares cores with the server.
"""
from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from moatkit.app.pipeline import percentile

Call = Callable[[], None]  # one request/response; raises on a failed request
SETUP_ATTEMPTS = 5


@dataclass
class LoadResult:
    clients: int
    seconds: float  # wall time from the common start to the last answer inside the window
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""
    setup_retries: int = 0  # connections re-opened before the window (e.g. reset by a short listen backlog)

    def summary(self) -> dict:
        done = len(self.latencies_ms)
        result = {"clients": self.clients, "requests": done, "errors": self.errors,
                  "req_per_s": round(done / self.seconds, 1) if self.seconds > 0 else 0.0,
                  "p50_ms": round(percentile(self.latencies_ms, 0.5), 2) if done else None,
                  "p99_ms": round(percentile(self.latencies_ms, 0.99), 2) if done else None}
        if self.first_error:
            result["first_error"] = self.first_error
        if self.setup_retries:
            result["setup_retries"] = self.setup_retries
        return result


def run_load(make_call: Callable[[], Call], *, clients: int, seconds: float, warmup_calls: int = 2) -> LoadResult:
    """Each client thread builds its own connection with `make_call()`, sends `warmup_calls` untimed requests, waits
    for every client to be ready, then loops until `seconds` have passed. Only answers inside the window count."""
    if clients < 1 or seconds <= 0:
        raise ValueError("run_load needs clients >= 1 and seconds > 0")
    result = LoadResult(clients=clients, seconds=0.0)
    lock = threading.Lock()
    window = {}
    setup_errors: list[BaseException] = []

    def open_window():  # runs once, when the last client is ready and before any is released
        window["start"] = time.perf_counter()
        window["end"] = window["start"] + seconds

    ready = threading.Barrier(clients, action=open_window)

    def client():
        for attempt in range(SETUP_ATTEMPTS):
            try:
                call = make_call()
                for _ in range(warmup_calls):
                    call()
                break
            except OSError as err:  # a reset while many clients connect at once: retried, and counted
                if attempt == SETUP_ATTEMPTS - 1:
                    setup_errors.append(err)
                    ready.abort()
                    return
                with lock:
                    result.setup_retries += 1
                time.sleep(0.1 * (attempt + 1))
            except BaseException as err:  # reported after the barrier, so no thread waits forever
                setup_errors.append(err)
                ready.abort()
                return
        try:
            ready.wait()
        except threading.BrokenBarrierError:  # another client failed to connect
            return
        latencies, errors, first_error, last = [], 0, "", 0.0
        deadline = window["end"]
        while True:
            tick = time.perf_counter()
            if tick >= deadline:
                break
            try:
                call()
            except Exception as err:  # counted, not raised: a loaded server may shed requests (UNAVAILABLE)
                errors += 1
                first_error = first_error or f"{type(err).__name__}: {err}"[:300]
                continue
            tock = time.perf_counter()
            if tock <= deadline:
                latencies.append((tock - tick) * 1000)
                last = tock
        with lock:
            result.latencies_ms.extend(latencies)
            result.errors += errors
            result.first_error = result.first_error or first_error
            window["last"] = max(window.get("last", 0.0), last)

    threads = [threading.Thread(target=client, name=f"loadgen-{i}", daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if setup_errors:
        raise RuntimeError(f"a load client failed before the run: {setup_errors[0]}") from setup_errors[0]
    result.seconds = window["last"] - window["start"] if result.latencies_ms else seconds
    return result


# === Clients ===

def rest_client(host_port: str, model: str, instances: list, *, signature_name: str = "",
                timeout: float = 30.0) -> Callable[[], Call]:
    """POST /v1/models/<model>:predict (row format) over one keep-alive HTTP/1.1 connection per client."""
    host, port = host_port.rsplit(":", 1)
    body = {"instances": instances}
    if signature_name:
        body["signature_name"] = signature_name
    payload = json.dumps(body).encode("utf-8")
    headers = {"Content-Type": "application/json", "Connection": "keep-alive"}
    path = f"/v1/models/{model}:predict"

    def make() -> Call:
        connection = http.client.HTTPConnection(host, int(port), timeout=timeout)

        def call():
            connection.request("POST", path, body=payload, headers=headers)  # bytes body: one send with the headers
            response = connection.getresponse()
            data = response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {data[:200]!r}")
            json.loads(data)

        return call

    return make


def grpc_client(host_port: str, model: str, inputs: dict, *, signature_name: str = "serving_default",
                timeout: float = 30.0) -> Callable[[], Call]:
    """PredictionService/Predict over one channel per client (a long-lived client's reusable channel)."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from moatkit.serving.client import open_channel

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature_name
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))

    def make() -> Call:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(open_channel(host_port))

        def call():
            stub.Predict(request, timeout=timeout)

        return call

    return make


def in_process_client(function, inputs: dict) -> Callable[[], Call]:
    """A loaded signature function called directly (the reference a server is measured against)."""
    import tensorflow as tf

    tensors = {name: tf.constant(value) for name, value in inputs.items()}

    def make() -> Call:
        def call():
            outputs = function(**tensors)
            for value in outputs.values():
                value.numpy()  # a client gets numbers, so the reference copies them out too

        return call

    return make


class BackgroundLoad:
    """Clients that keep sending unversioned one-text REST predicts (texts drawn at random) until the block ends,
    with every failure kept: the traffic a model transition must not disturb.

        with BackgroundLoad("127.0.0.1:8501", "sentiment", texts, clients=16) as load:
            ...  # canary, promote, roll back
        assert load.failures == []

    `interval_s` is each client's pause between requests (0: back to back, a saturating load; tests bound the
    rate so the loop under test keeps its CPU).
    """

    def __init__(self, rest: str, model: str, texts: list[str], *, clients: int = 16, seed: int = 0,
                 interval_s: float = 0.0):
        if not texts:
            raise ValueError("BackgroundLoad needs texts to send")
        self.rest, self.model, self.texts, self.seed = rest, model, list(texts), seed
        self.interval_s = interval_s
        self.failures: list[str] = []  # the first 100 failures; `failed` counts them all
        self.sent = self.failed = 0
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]

    def _client(self, index: int) -> None:
        import random

        rng = random.Random(self.seed * 1000 + index)
        host, port = self.rest.rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        while not self._stop.is_set():
            body = json.dumps({"instances": [rng.choice(self.texts)]})
            try:
                connection.request("POST", f"/v1/models/{self.model}:predict", body=body,
                                   headers={"Content-Type": "application/json"})
                response = connection.getresponse()
                payload = response.read()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}: {payload[:200]!r}")
                with self._lock:
                    self.sent += 1
                if self.interval_s:
                    self._stop.wait(self.interval_s)
            except Exception as err:  # noqa: BLE001  every failed request is the caller's business
                with self._lock:
                    self.failed += 1
                    if len(self.failures) < 100:
                        self.failures.append(repr(err)[:300])
                connection.close()
                connection = http.client.HTTPConnection(host, int(port), timeout=60)
                self._stop.wait(0.05)  # a server that is down must not turn the clients into busy loops
        connection.close()

    def __enter__(self) -> "BackgroundLoad":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)
