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

from app.errors import MoatError

_GRPC_LINE = re.compile(r"Running gRPC ModelServer at [^:\s]+:(\d+)")
_REST_LINE = re.compile(r"Exporting HTTP/REST API at:[^:\s]+:(\d+)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """Context manager: starts the server on 127.0.0.1 and waits until its ports are announced."""

    def __init__(self, *, model_name: str, model_base_path: str | Path, port: int = 0, rest_api_port: int = 0,
                 extra_flags: tuple[str, ...] = (), timeout: float = 120.0):
        # --rest_api_port=0 disables REST in TF Serving, so "any free port" is resolved here.
        self.flags = [f"--port={port or free_port()}", f"--rest_api_port={rest_api_port or free_port()}", f"--model_name={model_name}",
                      f"--model_base_path={Path(model_base_path).resolve()}", *extra_flags]
        self.timeout = timeout
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

    def _command(self) -> list[str]:
        real = shutil.which("tensorflow_model_server")
        if real and os.environ.get("MOAT_USE_REAL_TFSERVING") == "1":
            return [real, *self.flags]
        return [sys.executable, "-m", "serving.server", *self.flags]

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line.rstrip())
            if match := _GRPC_LINE.search(line):
                self.grpc_port = int(match.group(1))
            if match := _REST_LINE.search(line):
                self.rest_port = int(match.group(1))

    def start(self) -> "ServerProcess":
        root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        self.process = subprocess.Popen(self._command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env=env)
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
        raise MoatError("the model server did not start: " + (" | ".join(self.lines[-5:]) or "no output"),
                        fix="run `moat serve` with the same flags to see its full log")

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
