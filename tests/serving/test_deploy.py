"""serving/deploy/: the docker-compose file and Kubernetes manifests for the official tensorflow/serving image."""

from pathlib import Path

import pytest
import yaml

from moatkit.serving.batching import parse_batching_parameters
from moatkit.serving.model_manager import configs_from_text
from moatkit.serving.server import _prometheus_path, parse_flags

DEPLOY = Path(__file__).resolve().parents[2] / "serving" / "deploy"
IMAGE = "tensorflow/serving:2.18.0"
MODEL = "sentiment"


def _docs(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict]:
    kustomization = _docs(DEPLOY / "kustomization.yaml")[0]
    by_kind = {}
    for resource in kustomization["resources"]:
        for doc in _docs(DEPLOY / resource):
            assert doc["kind"] not in by_kind
            by_kind[doc["kind"]] = doc
    by_kind["Kustomization"] = kustomization
    return by_kind


def _check_server_args(args: list[str]) -> None:
    """The args parse with our flag parser and point at the mounted config files."""
    options = parse_flags(args)
    assert (options.port, options.rest_api_port) == (8500, 8501)
    assert options.enable_batching is True and options.enable_model_warmup is True
    assert options.model_config_file == "/config/models.config"
    assert options.batching_parameters_file == "/config/batching.config"
    assert options.monitoring_config_file == "/config/monitoring.config"
    assert "model_base_path" not in options.explicit  # cannot be combined with --model_config_file


def test_config_files_parse_as_tf_serving_protos():
    configs = configs_from_text((DEPLOY / "config" / "models.config").read_text())
    assert [(c.name, c.base_path, c.policy, c.num_versions) for c in configs] == \
        [(MODEL, f"/models/{MODEL}", "latest", 1)]
    params = parse_batching_parameters((DEPLOY / "config" / "batching.config").read_text())
    assert (params.max_batch_size, params.allowed_batch_sizes) == (64, (8, 16, 32, 64))
    assert _prometheus_path(str(DEPLOY / "config" / "monitoring.config")) == "/monitoring/prometheus/metrics"


def test_docker_compose_runs_the_official_image_with_our_flags():
    compose = _docs(DEPLOY / "docker-compose.yaml")[0]
    service = compose["services"]["tfserving"]
    assert service["image"] == IMAGE
    assert service["entrypoint"] == ["tensorflow_model_server"]
    _check_server_args(service["command"])
    assert service["ports"] == ["8500:8500", "8501:8501"]
    mounts = {v.rsplit(":", 2)[1]: v for v in service["volumes"]}
    assert set(mounts) == {"/models", "/config"} and all(v.endswith(":ro") for v in mounts.values())
    assert f"GET /v1/models/{MODEL} HTTP/1.0" in " ".join(service["healthcheck"]["test"])


def test_kubernetes_deployment_service_and_hpa(manifests):
    deployment, service, hpa = manifests["Deployment"], manifests["Service"], manifests["HorizontalPodAutoscaler"]
    assert deployment["apiVersion"] == "apps/v1"
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == IMAGE and container["command"] == ["tensorflow_model_server"]
    _check_server_args(container["args"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": 8500, "http": 8501}
    probe = container["readinessProbe"]["httpGet"]
    assert probe["path"] == f"/v1/models/{MODEL}" and ports[probe["port"]] == 8501
    assert ports[container["livenessProbe"]["tcpSocket"]["port"]] == 8500
    assert container["resources"]["requests"]["cpu"]  # the HPA's utilization is relative to it
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/models"]]["persistentVolumeClaim"]["claimName"] == \
        manifests["PersistentVolumeClaim"]["metadata"]["name"]
    config_map = volumes[mounts["/config"]]["configMap"]["name"]
    generated = {g["name"]: g["files"] for g in manifests["Kustomization"]["configMapGenerator"]}
    assert sorted(Path(f).name for f in generated[config_map]) == \
        ["batching.config", "models.config", "monitoring.config"]
    assert all((DEPLOY / f).is_file() for f in generated[config_map])

    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    assert service["spec"]["selector"] == labels
    assert {(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == \
        {("grpc", 8500, "grpc"), ("http", 8501, "http")}

    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
