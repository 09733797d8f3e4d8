"""The `moat` command line: one verb per life-cycle stage, plus `demo` and `bench`.

Configurable verbs take `--config FILE.yaml` and repeatable `--set key=value` (dots for nested keys);
`--print-config` shows the resolved config as YAML. User mistakes print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import sys

from moatkit.app.cli import compress, data, iterate, monitor, opinion, recommend, run, serve, support, train
from moatkit.data.core.env import filter_native_logs
from moatkit.data.core.errors import MoatError
from moatkit.serving.errors import ServerError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moat", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's C++ log lines (oneDNN, CUDA, XLA), hidden by default; "
                             "TF_CPP_MIN_LOG_LEVEL=0 does the same")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for group in (data, train, serve, monitor, iterate, support, opinion, recommend, compress, run):  # in the order of the life cycle
        group.add_parsers(verbs)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--verbose" not in argv[:1]:
        filter_native_logs()
    if argv[:1] == ["serve"]:  # argparse cannot pass `--flag=value` through untouched, so hand them over directly
        from moatkit.serving.server import main as server_main
        return server_main(argv[1:]) or 0
    args = build_parser().parse_args(argv)  # `moat --verbose VERB …` keeps the native log lines
    try:
        return args.func(args)
    except (MoatError, ServerError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TimeoutError as err:  # e.g. a served model that never became AVAILABLE
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
