"""The serving benchmark's code path on a tiny model: both protocols, batching off and on, the in-process
reference, JSON + markdown (the real numbers come from `make bench` on the MR model)."""
import json

from moatkit.app.bench import BenchConfig, run_bench
from tests import serving_helpers as models


def test_serving_bench_smoke(tmp_path):
    models.save_text_model(str(tmp_path / "repo" / "tiny" / "1"), offset=0.0)
    out = tmp_path / "out"
    out.mkdir()
    (out / "bench.json").write_text(json.dumps({"tokenize": {"batch_size": 32, "ours_sentences_per_s": 1,
                                                             "hf_fast_sentences_per_s": 1, "ratio_ours_over_hf": 1.0}}))
    config = BenchConfig(benchmarks=["serve"], model_base_path=str(tmp_path / "repo" / "tiny"), model_name="tiny",
                         serve_seconds=0.3, serve_warmup_seconds=0.2, serve_clients=[1, 2], out_dir=str(out))
    serve = run_bench(config, log=lambda line: None)["serve"]

    points = {(p["protocol"], p["batching"], p["clients"]): p for p in serve["points"]}
    assert sorted(points) == sorted((proto, batching, clients) for proto in ("rest", "grpc")
                                    for batching in (False, True) for clients in (1, 2))
    for point in [serve["in_process"], *points.values()]:
        assert point["errors"] == 0 and point["requests"] > 0 and point["req_per_s"] > 0
        assert 0 < point["p50_ms"] <= point["p99_ms"]
    assert serve["grpc_p50_ms"] == points[("grpc", False, 1)]["p50_ms"]
    assert serve["grpc_p50_over_in_process"] == round(serve["grpc_p50_ms"] / serve["in_process"]["p50_ms"], 3)
    assert serve["grpc_batching_speedup_at_2"] == round(
        points[("grpc", True, 2)]["req_per_s"] / points[("grpc", False, 2)]["req_per_s"], 3)

    assert json.loads((out / "serving.json").read_text()) == serve
    stored = json.loads((out / "bench.json").read_text())
    assert stored["serve"] == serve and stored["tokenize"]["ratio_ours_over_hf"] == 1.0  # earlier result kept
    table = (out / "bench.md").read_text().splitlines()
    assert len(table) == 2 + 1 + 1 + 2  # header, rule, tokenize (kept), latency row, REST + gRPC batching rows
    assert "in-process signature call" in table[3]
    assert len((out / "serving.md").read_text().splitlines()) == 2 + 1 + 8  # header, rule, reference, 8 points
