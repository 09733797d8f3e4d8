"""`moat serve` (flags passed through like tensorflow_model_server's) answered by `moat predict` over REST and gRPC."""
import json
import subprocess
import sys
from pathlib import Path

from moatkit.serving import client
from moatkit.serving.process import free_port

ROOT = Path(__file__).resolve().parents[2]


def _moat(*args):
    return subprocess.run([sys.executable, "-m", "moatkit.app.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=180)


def test_serve_help_is_the_model_server_help():
    result = _moat("serve", "--help")
    assert result.returncode == 0 and "--model_base_path" in result.stdout


def test_moat_serve_then_predict(small_export):
    base_path = Path(small_export["version_dir"]).parent  # small_run exported once per session, served read-only
    grpc_port, rest_port = free_port(), free_port()
    server = subprocess.Popen([sys.executable, "-m", "moatkit.app.cli", "serve", f"--port={grpc_port}",
                               f"--rest_api_port={rest_port}", "--model_name=sentiment",
                               f"--model_base_path={base_path}"], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client.wait_until_available("sentiment", rest=f"127.0.0.1:{rest_port}", timeout=120)
        rest = _moat("predict", "a wonderful, moving film", "--server", f"127.0.0.1:{rest_port}")
        grpc = _moat("predict", "a wonderful, moving film", "--server", f"127.0.0.1:{grpc_port}", "--grpc")
        assert rest.returncode == 0 and grpc.returncode == 0, rest.stderr + grpc.stderr
        rest_row = json.loads(rest.stdout)["predictions"][0]
        grpc_out = json.loads(grpc.stdout)
        assert rest_row["label"] == grpc_out["label"][0]
        assert abs(rest_row["probabilities"][1] - grpc_out["probabilities"][0][1]) < 1e-6
        missing = _moat("predict", "x", "--server", f"127.0.0.1:{rest_port}", "--model", "nope")
        assert missing.returncode == 2
        assert missing.stderr.strip().splitlines()[-1] == (
            f"error: the server at 127.0.0.1:{rest_port} answered HTTP 404: Servable not found for request: "
            "Latest(nope)")
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert server.returncode == 0  # SIGTERM is a clean shutdown
