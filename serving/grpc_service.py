"""gRPC services of moat-model-server: tensorflow.serving.PredictionService, ModelService and grpc.health.v1.

Registered with the generated `tensorflow_serving.apis.*_pb2_grpc` helpers, so the stubs unmodified TF Serving
clients use talk to this server. Errors carry TF Serving's status codes and messages.
"""
from __future__ import annotations


import concurrent.futures
import logging
import os

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tensorflow.core.protobuf import error_codes_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     inference_pb2, model_management_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc, regression_pb2)

from moatkit.serving import tensors
from moatkit.serving.model_manager import ModelManager
from moatkit.serving.servable import CLASSIFY_METHOD, DEFAULT_SIGNATURE, REGRESS_METHOD, input_examples
from moatkit.serving.errors import ServerError
from moatkit.serving.tensors import ServingError, invalid

log = logging.getLogger("moat.serving")


def _abort(context: grpc.ServicerContext, err: ServingError):
    context.abort(getattr(grpc.StatusCode, err.code, grpc.StatusCode.UNKNOWN), err.message)


def _servable(manager: ModelManager, spec, *, route: bool = True):
    if not spec.name:
        raise invalid("Missing ModelSpec")
    which = spec.WhichOneof("version_choice")
    version = spec.version.value if which == "version" else None
    label = spec.version_label if which == "version_label" else None
    return manager.get_servable(spec.name, version=version, label=label, route=route)


def _fill_spec(out_spec, servable, signature_name: str) -> None:
    out_spec.name = servable.name
    out_spec.version.value = servable.version
    out_spec.signature_name = signature_name


def _guarded(method):
    """Turns ServingError into the matching gRPC status instead of an UNKNOWN traceback."""
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except ServingError as err:
            _abort(context, err)
        except Exception as err:  # a bug: INTERNAL with the reason, rather than grpc's opaque UNKNOWN
            log.exception("gRPC %s failed", method.__name__)
            _abort(context, ServingError("INTERNAL", f"{type(err).__name__}: {err}"))
    wrapper.__name__ = method.__name__
    return wrapper


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager: ModelManager, counter=None, *, max_request_bytes: int | None = None):
        self.manager = manager
        self.counter = counter
        self.max_request_bytes = max_request_bytes

    def _count(self, api: str, model: str) -> None:
        if self.counter is not None:
            self.counter.add(api=api, model=model, code="OK")

    def _log(self, kind: str, servable, signature: str, request, response) -> None:
        """Request logging (the model's logging_config), after a successful call."""
        logger = self.manager.request_logger(servable.name)
        if logger is not None and logger.sample():
            logger.write(kind, request, response, version=servable.version, signature_name=signature)

    @_guarded
    def Predict(self, request, context):  # noqa: N802  (gRPC method names)
        servable = _servable(self.manager, request.model_spec)
        signature = request.model_spec.signature_name or DEFAULT_SIGNATURE
        inputs = {alias: tensors.from_tensor_proto(proto, alias=alias, max_bytes=self.max_request_bytes)
                  for alias, proto in request.inputs.items()}
        outputs = servable.predict(inputs, signature_name=signature, output_filter=tuple(request.output_filter))
        response = predict_pb2.PredictResponse()
        _fill_spec(response.model_spec, servable, signature)
        for alias, array in outputs.items():
            response.outputs[alias].CopyFrom(tensors.to_tensor_proto(array))
        self._count("predict", servable.name)
        self._log("predict_log", servable, signature, request, response)
        return response

    @_guarded
    def GetModelMetadata(self, request, context):  # noqa: N802
        if not request.metadata_field:
            raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != "signature_def":
                raise invalid(f"Metadata field {field} is not supported")
        servable = _servable(self.manager, request.model_spec, route=False)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        _fill_spec(response.model_spec, servable, "")
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for name, signature in servable.signature_defs.items():
            signature_map.signature_def[name].CopyFrom(signature)
        response.metadata["signature_def"].Pack(signature_map)
        return response

    @_guarded
    def Classify(self, request, context):  # noqa: N802
        servable = _servable(self.manager, request.model_spec)
        signature = request.model_spec.signature_name or DEFAULT_SIGNATURE
        examples = [e.SerializeToString() for e in input_examples(request.input)]
        response = classification_pb2.ClassificationResponse()
        _fill_spec(response.model_spec, servable, signature)
        for row in servable.classify(examples, signature_name=signature):
            classifications = response.result.classifications.add()
            for label, score in row:
                classifications.classes.add(label=label, score=score)
        self._count("classify", servable.name)
        self._log("classify_log", servable, signature, request, response)
        return response

    @_guarded
    def Regress(self, request, context):  # noqa: N802
        servable = _servable(self.manager, request.model_spec)
        signature = request.model_spec.signature_name or DEFAULT_SIGNATURE
        examples = [e.SerializeToString() for e in input_examples(request.input)]
        response = regression_pb2.RegressionResponse()
        _fill_spec(response.model_spec, servable, signature)
        for value in servable.regress(examples, signature_name=signature):
            response.result.regressions.add(value=value)
        self._count("regress", servable.name)
        self._log("regress_log", servable, signature, request, response)
        return response

    @_guarded
    def MultiInference(self, request, context):  # noqa: N802
        if not request.tasks:
            raise invalid("Signature names should be specified")
        names = {task.model_spec.name for task in request.tasks}
        if len(names) != 1:
            raise invalid("All ModelSpecs in a MultiInferenceRequest must access the same model name.")
        examples = [e.SerializeToString() for e in input_examples(request.input)]
        response = inference_pb2.MultiInferenceResponse()
        for task in request.tasks:
            servable = _servable(self.manager, task.model_spec)
            signature = task.model_spec.signature_name or DEFAULT_SIGNATURE
            result = response.results.add()
            _fill_spec(result.model_spec, servable, signature)
            if task.method_name == CLASSIFY_METHOD:
                for row in servable.classify(examples, signature_name=signature):
                    classifications = result.classification_result.classifications.add()
                    for label, score in row:
                        classifications.classes.add(label=label, score=score)
            elif task.method_name == REGRESS_METHOD:
                for value in servable.regress(examples, signature_name=signature):
                    result.regression_result.regressions.add(value=value)
            else:
                raise ServingError("UNIMPLEMENTED", f"Unsupported signature method_name: {task.method_name}")
        return response


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager: ModelManager, *, reload_config=None):
        self.manager = manager
        self._reload_config = reload_config

    @_guarded
    def GetModelStatus(self, request, context):  # noqa: N802
        spec = request.model_spec
        if not spec.name:
            raise invalid("Missing ModelSpec")
        which = spec.WhichOneof("version_choice")
        version = spec.version.value if which == "version" else None
        if which == "version_label":
            version = self.manager.resolve_label(spec.name, spec.version_label)
        response = get_model_status_pb2.GetModelStatusResponse()
        for state in self.manager.version_status(spec.name, version=version):
            entry = response.model_version_status.add(version=state.version)
            entry.state = get_model_status_pb2.ModelVersionStatus.State.Value(state.state)
            entry.status.error_code = error_codes_pb2.Code.Value(state.error_code)
            entry.status.error_message = state.error_message
        return response

    def HandleReloadConfigRequest(self, request, context):  # noqa: N802
        from moatkit.serving.model_manager import configs_from_text
        from google.protobuf import text_format

        response = model_management_pb2.ReloadConfigResponse()
        try:
            configs = configs_from_text(text_format.MessageToString(request.config), source="ReloadConfigRequest")
            if self._reload_config is not None:
                self._reload_config(configs)
            else:
                self.manager.reload_config(configs)
        except Exception as err:  # reported in the response status, as TF Serving does
            response.status.error_code = error_codes_pb2.INVALID_ARGUMENT
            response.status.error_message = str(err)
            return response
        response.status.error_code = error_codes_pb2.OK
        return response


def bind_host() -> str:
    return "0.0.0.0" if os.environ.get("MOAT_BIND_ALL") == "1" else "127.0.0.1"


DEFAULT_MAX_RECEIVE_BYTES = 128 * 1024 * 1024
MAX_RECEIVE = "grpc.max_receive_message_length"


def make_grpc_server(manager: ModelManager, *, port: int, host: str | None = None, counter=None,
                     max_workers: int = 64, channel_arguments: list[tuple[str, object]] = (),
                     socket_path: str = "") -> tuple[grpc.Server, int, health.HealthServicer]:
    """Builds (not starts) the gRPC server; returns (server, bound port, health servicer). With `socket_path`
    (--grpc_socket_path) it also listens on that Unix domain socket, as TF Serving does.
    Messages over grpc.max_receive_message_length (default DEFAULT_MAX_RECEIVE_BYTES) get RESOURCE_EXHAUSTED."""
    options = dict([(MAX_RECEIVE, DEFAULT_MAX_RECEIVE_BYTES), ("grpc.max_send_message_length", -1),
                    ("grpc.so_reuseport", 0)])
    options.update(channel_arguments)
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=max_workers,
                                                               thread_name_prefix="moat-grpc"),
                         options=list(options.items()))
    limit = options[MAX_RECEIVE] if isinstance(options[MAX_RECEIVE], int) and options[MAX_RECEIVE] > 0 else None
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(manager, counter, max_request_bytes=limit), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(manager), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bound = _listen(server, f"{host or bind_host()}:{port}")
    if bound == 0:
        raise OSError(f"could not bind gRPC port {port}")
    if socket_path and _listen(server, f"unix:{socket_path}") == 0:
        raise ServerError(f"could not listen on the Unix socket {socket_path}",
                          fix="pass --grpc_socket_path a path in an existing, writable directory")
    return server, bound, health_servicer


def _listen(server: grpc.Server, address: str) -> int:
    """The bound port, or 0 when binding failed (grpcio reports that as 0 or, in newer releases, RuntimeError)."""
    try:
        return server.add_insecure_port(address)
    except RuntimeError:
        return 0


def set_health(health_servicer: health.HealthServicer, manager: ModelManager, *, serving: bool) -> None:
    """Overall ("") and per-model health, SERVING while the model has an AVAILABLE version."""
    status = health_pb2.HealthCheckResponse
    health_servicer.set("", status.SERVING if serving else status.NOT_SERVING)
    for name in manager.model_names():
        try:
            manager.get_servable(name)
            ok = serving
        except ServingError:
            ok = False
        health_servicer.set(name, status.SERVING if ok else status.NOT_SERVING)
