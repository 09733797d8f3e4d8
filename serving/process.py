"""Start `moat-model-server` (or the real tensorflow_model_server when installed) as a child process."""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from moatkit.serving.errors import ServerError

_GRPC_LINE = re.compile(r"Running gRPC ModelServer at [^:\s]+:(\d+)")
_REST_LINE = re.compile(r"Exporting HTTP/REST API at:[^:\s]+:(\d+)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """Context manager: starts the server on 127.0.0.1 and waits until its ports are announced.

    Serves one model (`model_name` + `model_base_path`) or a `model_config_file`. `binary` runs another
    tensorflow_model_server-compatible executable (e.g. the real one) with the same flags; by default this is
    `moat-model-server`, or the real binary on PATH when MOAT_USE_REAL_TFSERVING=1."""

    def __init__(self, *, model_name: str | None = None, model_base_path: str | Path | None = None,
                 model_config_file: str | Path | None = None, port: int = 0, rest_api_port: int = 0,
                 extra_flags: tuple[str, ...] = (), timeout: float = 120.0, binary: str | None = None):
        if (model_config_file is None) == (model_base_path is None):
            raise ServerError("pass either model_base_path (with model_name) or model_config_file",
                            fix="ServerProcess(model_name='m', model_base_path='/models/m') or "
                                "ServerProcess(model_config_file='models.config')")
        # --rest_api_port=0 disables REST in TF Serving, so "any free port" is resolved here.
        self.flags = [f"--port={port or free_port()}", f"--rest_api_port={rest_api_port or free_port()}"]
        if model_config_file is not None:
            self.flags.append(f"--model_config_file={Path(model_config_file).resolve()}")
        else:
            self.flags += [f"--model_name={model_name or 'default'}",
                           f"--model_base_path={Path(model_base_path).resolve()}"]
        self.flags += list(extra_flags)
        self.timeout = timeout
        self.binary = binary
        self.grpc_port: int | None = None
        self.rest_port: int | None = None
        self.lines: list[str] = []
        self.process: subprocess.Popen | None = None

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def rest_address(self) -> str:
        return f"127.0.0.1:{self.rest_port}"

    def output(self) -> str:
        """Everything the server printed so far (stdout and stderr)."""
        return "\n".join(self.lines)

    def _command(self) -> list[str]:
        if self.binary:
            return [self.binary, *self.flags]
        real = shutil.which("tensorflow_model_server")
        if real and os.environ.get("MOAT_USE_REAL_TFSERVING") == "1":
            return [real, *self.flags]
        return [sys.executable, "-m", "moatkit.serving.server", *self.flags]

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line.rstrip())
            if match := _GRPC_LINE.search(line):
                self.grpc_port = int(match.group(1))
            if match := _REST_LINE.search(line):
                self.rest_port = int(match.group(1))

    def start(self) -> "ServerProcess":
        self.process = subprocess.Popen(self._command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        errors="replace")
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        deadline = time.time() + self.timeout
        while time.time() < deadline:
            if self.grpc_port and self.rest_port:
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()  # also drains the output, so the message below has the server's last lines
        raise ServerError("the model server did not start: " + (" | ".join(self.lines[-5:]) or "no output"),
                        fix="run `moat serve` with the same flags to see its full log")

    def terminate(self, *, timeout: float = 60.0) -> int:
        """SIGTERM (graceful: in-flight requests finish); returns the exit code."""
        self.process.terminate()
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process:
            self.reader.join(timeout=5)  # the pipe reaches EOF once the process has exited
            if not self.reader.is_alive():
                self.process.stdout.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
