"""`moat compress` with the serving round-trip: every exported variant is served by one moat-model-server and
asked over REST and gRPC. It lives in app/ because it joins two stages: models/compress and serving/."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from moatkit.models.compress.base import CompressConfig
from moatkit.models.compress.report import mb, mr_recipes, run_compress as compress_and_report


def run_compress(config: CompressConfig, *, log=print) -> dict:
    return compress_and_report(config, log=log, serve_check=serve_check)


def serve_check(exports: dict[str, dict], texts: list[str], expected: dict[str, list[str]], work_dir: Path) -> dict:
    """Serves every exported variant from one moat-model-server (--prefer_tflite_model, so TFLite versions run on
    the interpreter) and asks each over REST and gRPC. Per variant: both answered, their labels agree, and how many
    labels equal the in-process token-id predictions (`expected`)."""
    from moatkit.serving import client
    from moatkit.serving.process import free_port
    from moatkit.serving.server import ModelServer, parse_flags, validate

    work_dir.mkdir(parents=True, exist_ok=True)
    config_file = work_dir / "models.config"
    config_file.write_text("model_config_list {\n" + "".join(
        f'  config {{ name: "{e["model_name"]}" base_path: "{Path(e["version_dir"]).parent.resolve()}" '
        f'model_platform: "tensorflow" }}\n' for e in exports.values()) + "}\n")
    options = parse_flags([f"--port={free_port()}", f"--rest_api_port={free_port()}", "--prefer_tflite_model",
                           f"--model_config_file={config_file}"])
    validate(options)
    server = ModelServer(options)
    server.start()
    results = {}
    try:
        rest, grpc_target = f"127.0.0.1:{server.rest_port}", f"127.0.0.1:{server.grpc_port}"
        for variant, export in exports.items():
            name = export["model_name"]
            client.wait_until_available(name, rest=rest, timeout=300)
            by_rest = [p["label"] for p in client.rest_predict(rest, name, texts)["predictions"]]
            by_grpc = client.grpc_predict(grpc_target, name, {"text": np.array(texts, dtype=object)})
            by_grpc = by_grpc["label"].astype(str).tolist()
            results[variant] = {"rest": True, "grpc": True, "rest_equals_grpc": by_rest == by_grpc,
                                "labels_match_token_id_model": sum(a == b for a, b in zip(by_rest, expected[variant])),
                                "texts": len(texts), "engine": export["format"]}
    finally:
        server.stop()
    return results


def bench_compress(*, model_dir: str = "runs/sentiment/model", out_dir: str = "bench/results/compress",
                   log=print) -> dict | None:
    """`moat bench`'s compress entry: the full report (all methods) on the fine-tuned MR baseline, exported into a
    model repository under out_dir (not the serving repository). None when there is no baseline yet."""
    if not (Path(model_dir) / "moat_task.json").is_file():
        return None
    out = Path(out_dir)
    if (out / "models").exists():
        shutil.rmtree(out / "models")  # one version per variant, not one more per bench run
    report = run_compress(CompressConfig(model_dir=model_dir, out_dir=str(out), repo=str(out / "models"),
                                         name="sentiment", **mr_recipes()), log=log)
    rows = []
    base = report["variants"][0]
    for r in report["variants"][1:]:
        rows.append(f"| compress {r['name']} vs float32 SavedModel (MR test accuracy; size; batch-1 p50 ms) | "
                    f"{r['accuracy']:.4f}; {mb(r['bytes'])} MB; {r['p50_ms']} | {base['accuracy']:.4f}; "
                    f"{mb(base['bytes'])} MB; {base['p50_ms']} | {r['speedup_p50_x']} ({r['smaller_x']}× smaller, "
                    f"{r['accuracy_delta_points']:+.2f} pts) |")
    return {"report": str(out / "report.json"), "variants": report["variants"], "acceptance": report["acceptance"],
            "bench_rows": rows}
