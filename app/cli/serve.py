"""`moat export`, `moat serve`, `moat predict`: from a model dir to a served model and back."""
from __future__ import annotations

import argparse
import json

from moatkit.app.cli.common import add_verb
from moatkit.data.core.errors import MoatError


def export(args, config) -> None:
    from moatkit.models.export import export_text_model
    extra = None
    if config.monitoring_profile:
        from moatkit.app.monitor_profile import export_profile_hook
        extra = export_profile_hook()
    print(json.dumps(export_text_model(config, extra=extra)))


def predict(args) -> None:
    import urllib.error

    import grpc

    from moatkit.serving import client
    server = args.server or ("localhost:8500" if args.grpc else "localhost:8501")
    start_hint = "start one with `moat serve --port=8500 --rest_api_port=8501 --model_name=… --model_base_path=…`"
    try:
        if args.grpc:
            import numpy as np
            outputs = client.grpc_predict(server, args.model, {"text": np.array(args.texts, dtype=object)},
                                          signature_name=args.signature_name)
            print(json.dumps({k: (v.astype(str) if v.dtype == object else v).tolist() for k, v in outputs.items()}))
        else:
            print(json.dumps(client.rest_predict(server, args.model, args.texts,
                                                 signature_name=args.signature_name)))
    except client.RestError as err:
        raise MoatError(f"the server at {server} answered HTTP {err.status}: {err.message}") from None
    except urllib.error.URLError as err:
        raise MoatError(f"no REST server reachable at {server} ({err.reason})", fix=start_hint) from None
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.UNAVAILABLE:
            raise MoatError(f"no gRPC server reachable at {server}", fix=start_hint) from None
        raise MoatError(f"the server at {server} answered {err.code().name}: {err.details()}") from None


def add_parsers(verbs) -> None:
    add_verb(verbs, "export", export, config="moatkit.models.export:ExportConfig",
             help="export a fine-tuned model into a TF Serving model repository")
    # `moat serve` hands its flags to moat-model-server untouched (see moatkit.app.cli.main); this entry is for --help.
    p = verbs.add_parser("serve", help="run moat-model-server (tensorflow_model_server flags, e.g. --port=8500)",
                         add_help=False)
    p.add_argument("flags", nargs=argparse.REMAINDER, help="flags passed to moat-model-server")
    p = add_verb(verbs, "predict", predict, help="send texts to a running server over REST (default) or gRPC")
    p.add_argument("texts", nargs="+", help="sentences to classify")
    p.add_argument("--server", help="host:port of the API (default localhost:8501, or localhost:8500 with --grpc)")
    p.add_argument("--model", default="sentiment", help="model name on the server")
    p.add_argument("--grpc", action="store_true", help="use gRPC PredictionService instead of REST")
    p.add_argument("--signature_name", default="serving_default")
