"""The one way a verb is added to the parser: help, description, config flags, and a lazily imported config."""
from __future__ import annotations

import argparse
import importlib
from typing import Callable

from moatkit.data.core.config import add_config_flags, config_from_args


def _load(spec: str) -> type:
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def add_verb(verbs, name: str, run: Callable, *, help: str, description: str | None = None,
             config: str | None = None, shortcuts: Callable | None = None, **parser_kwargs) -> argparse.ArgumentParser:
    """Adds verb `name`. With `config` ('module:Class', imported only when the verb runs, so `moat --help` loads no
    TensorFlow) the verb takes --config/--set/--print-config and `run(args, config)` gets the resolved dataclass;
    `shortcuts(args)` turns verb-specific flags into overrides placed before the user's own --set values.
    Without it, `run(args)` gets the parsed flags."""
    parser = verbs.add_parser(name, help=help, description=description or help, **parser_kwargs)

    def func(args) -> int:
        if config is None:
            return run(args) or 0
        if shortcuts is not None:
            args.overrides = [*shortcuts(args), *args.overrides]
        resolved = config_from_args(_load(config), args)
        return 0 if resolved is None else (run(args, resolved) or 0)

    if config is not None:
        add_config_flags(parser)
    parser.set_defaults(func=func)
    return parser
