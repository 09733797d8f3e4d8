import os
import subprocess
import sys
from pathlib import Path

import pytest

from moatkit.app.cli import build_parser

VERBS = [["data"], ["data", "list"], ["data", "fetch"], ["data", "split"], ["data", "prepare"], ["data", "dedup"],
         ["data", "tokenizer"], ["data", "pretraining-examples"], ["data", "label"],
         *[["data", "label", v] for v in ("weak", "select", "merge", "quality", "augment")],
         ["finetune"], ["train-seq2seq"], ["export"], ["predict"], ["demo"], ["bench"]]
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("verb", VERBS, ids=" ".join)
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*verb, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: moat " + " ".join(verb))
    assert len(out.splitlines()) > 3


def _moat(*args, env=None):
    return subprocess.run([sys.executable, "-m", "moatkit.app.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_serve_help_shows_the_tensorflow_model_server_flags():
    result = subprocess.run([sys.executable, "-m", "moatkit.serving.server", "--help"], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0
    for flag in ("--port", "--rest_api_port", "--model_name", "--model_base_path", "--model_config_file"):
        assert flag in result.stdout


def test_user_mistakes_print_one_line_without_traceback(tmp_path):
    result = _moat("finetune", "--set", "epochs=x")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == \
        "error: config key 'epochs': got 'x', expected int or null — set it with --set epochs=VALUE"

    result = _moat("data", "fetch", "imagenet")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: unknown catalog name 'imagenet'")

    result = _moat("data", "fetch", "mr", "--from", str(tmp_path / "nowhere.txt"),
                   env={"MOAT_HOME": str(tmp_path / "home")})
    assert result.returncode == 2
    assert "--from path" in result.stderr and "Traceback" not in result.stderr


def test_predict_without_a_server_is_a_clear_error():
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for flags in ([], ["--grpc"]):
        result = _moat("predict", "hello", "--server", f"127.0.0.1:{port}", *flags)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert f"server reachable at 127.0.0.1:{port}" in result.stderr and "moat serve" in result.stderr


def test_console_script_is_installed():
    import shutil
    moat = shutil.which("moat", path=str(Path(sys.executable).parent))
    assert moat, "moatkit is not installed in this environment (make test installs it)"
    result = subprocess.run([moat, "data", "list"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "minilm-l6" in result.stdout


def test_print_config_shows_resolved_yaml():
    result = _moat("demo", "--set", "finetune.epochs=3", "--print-config")
    assert result.returncode == 0, result.stderr
    assert "  epochs: 3\n" in result.stdout and "model_name: sentiment" in result.stdout


def test_tensorflow_native_log_lines_stay_off_the_terminal_unless_verbose():
    from moatkit.data.core.env import NATIVE_LOG_LINE

    def native_lines(result):
        return [line for line in result.stderr.splitlines() if NATIVE_LOG_LINE.match(line.encode())]

    quiet = _moat("export", "--set", "nope=1", env={"TF_CPP_MIN_LOG_LEVEL": ""})  # imports TensorFlow, then errs
    assert quiet.returncode == 2
    assert native_lines(quiet) == [] and quiet.stderr.strip().splitlines() == [
        "error: unknown config key 'nope' — allowed keys: model_dir, repo, name, version, max_length, tflite, tflite_quantization, monitoring_profile"]
    verbose = _moat("--verbose", "export", "--set", "nope=1")
    assert verbose.returncode == 2 and native_lines(verbose)  # oneDNN / CUDA notices on this CPU machine


def test_native_log_filter_passes_progress_bars_and_drops_only_log_lines():
    script = ("import os, sys\n"
              "from moatkit.data.core.env import filter_native_logs\n"
              "filter_native_logs()\n"
              "os.write(2, b'I0000 00:00:1796587168.324344    8550 port.cc:153] oneDNN custom operations are on\\n')\n"
              "sys.stderr.write('fetch:  50%|#####     |\\r'); sys.stderr.flush()\n"
              "sys.stderr.write('fetch: 100%|##########|\\nEpoch 1 done\\n')\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": ""})
    assert result.stderr == b"fetch:  50%|#####     |\rfetch: 100%|##########|\nEpoch 1 done\n"
