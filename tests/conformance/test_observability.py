"""Observability on the live server: Prometheus metrics (request and batching counters), warmup replay before a
version is served, and (moat-model-server) the grpc.health.v1 service."""

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.serving_helpers import MOAT, http


def test_prometheus_metrics(live):
    for _ in range(3):
        assert http(live.rest, "POST", "/v1/models/default:predict", {"instances": [1.0]})[0] == 200
    status, text = http(live.rest, "GET", "/monitoring/prometheus/metrics")
    assert status == 200 and isinstance(text, str)
    assert "# TYPE" in text
    assert ':tensorflow:serving:request_count{model_name="default",status="OK"' in text
    assert ":tensorflow:serving:batching_session:" in text  # --enable_batching is on for this server


def test_warmup_records_replayed_before_serving(live):
    assert f"Number of warmup records read: {live.warmup_records}." in live.server.output()


def test_grpc_health(live):
    if live.kind != MOAT:
        pytest.skip("tensorflow_model_server does not implement grpc.health.v1")
    stub = health_pb2_grpc.HealthStub(live.channel)
    for service in ("", "default", "labelled"):
        assert stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status == \
            health_pb2.HealthCheckResponse.SERVING
