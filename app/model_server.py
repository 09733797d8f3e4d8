"""Starting moat-model-server for an application's own models (support, opinion): exactly the versions it built,
tuned for many small concurrent requests."""
from __future__ import annotations

import os
from pathlib import Path


def model_config_text(models: list[tuple[str, Path]]) -> str:
    """A model_config_list serving each (name, version dir) at exactly that version."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    proto = model_server_config_pb2.ModelServerConfig()
    for name, version_dir in models:
        entry = proto.model_config_list.config.add(name=name, base_path=str(Path(version_dir).parent),
                                                   model_platform="tensorflow")
        entry.model_version_policy.specific.versions.append(int(Path(version_dir).name))
    return text_format.MessageToString(proto)


def tuned_flags(folder: Path, *, batching: bool, max_batch_size: int = 32, timeout_micros: int = 1000) -> tuple[str, ...]:
    """Concurrent requests share a forward pass (batching, 1 ms wait), and each op runs on one thread with as many
    ops at once as there are cores. Measured on 2 cores, 16 support sessions: p95 264 ms with batching alone, 158 ms
    with both (docs/results.md)."""
    flags = ["--tensorflow_intra_op_parallelism=1", f"--tensorflow_inter_op_parallelism={os.cpu_count() or 1}"]
    if batching:
        parameters = folder / "batching.config"
        parameters.write_text(f"max_batch_size {{ value: {max_batch_size} }}\n"
                              f"batch_timeout_micros {{ value: {timeout_micros} }}\n"
                              f"num_batch_threads {{ value: {os.cpu_count() or 1} }}\n", encoding="utf-8")
        flags += ["--enable_batching", f"--batching_parameters_file={parameters}"]
    return tuple(flags)


def wait_for_models(address: str, models: list[tuple[str, int]], timeout: float) -> None:
    from moatkit.serving.client import wait_until_available
    from moatkit.serving.errors import ServerError

    for name, version in models:
        try:
            wait_until_available(name, grpc_target=address, version=version, timeout=timeout)
        except TimeoutError as err:
            raise ServerError(f"the model server at {address} does not serve {name} version {version}: {err}",
                              fix="serve the model there, or leave model_server unset to start one") from None
