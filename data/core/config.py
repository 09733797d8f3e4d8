"""Dataclass configs ⇄ YAML, with `--set key=value` overrides and one-line validation errors.

Every stage has a dataclass config. Values come, in order of precedence, from `--set` overrides, a `--config`
YAML file, and the dataclass defaults. Nested dataclasses are addressed with dots (`--set train.epochs=2`).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Literal, TypeVar, Union, get_args, get_origin

import yaml

from moatkit.data.core.errors import ConfigError

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        return f"list of {_type_name(get_args(tp)[0])}"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Returns `value` converted to `tp`, or raises ConfigError naming `key` and what is allowed."""
    origin = get_origin(tp)
    if origin is Literal:
        if value in get_args(tp):
            return value
    elif origin in (Union, types.UnionType):
        for option in get_args(tp):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
    elif origin in (list, tuple):
        if isinstance(value, str) and value.strip().startswith("["):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                pass
        elif isinstance(value, str):
            # 'a,b' is a list of two for numbers; a text may contain commas, so strings need the [..] form.
            value = [value] if get_args(tp)[0] is str else [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, (list, tuple)):
            items = [_coerce(v, get_args(tp)[0], key) for v in value]
            return tuple(items) if origin is tuple else items
    elif origin is dict:  # --set golden.NAME=DIR builds the dict key by key; a YAML {..} sets it whole
        if isinstance(value, str) and value.strip().startswith("{"):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                pass
        if isinstance(value, dict):
            key_type, value_type = get_args(tp)
            return {_coerce(k, key_type, key): _coerce(v, value_type, f"{key}.{k}") for k, v in value.items()}
    elif tp is type(None):
        if value is None or value in ("null", "none", "None", ""):
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return from_dict(tp, value, prefix=key + ".")
    raise ConfigError(f"config key '{key}': got {value!r}, expected {_type_name(tp)}",
                      fix=f"set it with --set {key}=VALUE")


def from_dict(cls: type[T], values: dict, *, prefix: str = "") -> T:
    """Builds `cls` from a (possibly nested) dict, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in values.items():
        if name not in fields:
            raise ConfigError(f"unknown config key '{prefix}{name}'",
                              fix="allowed keys: " + ", ".join(prefix + f for f in fields))
        kwargs[name] = _coerce(value, hints[name], prefix + name)
    config = cls(**kwargs)
    validate = getattr(config, "validate", None)
    if validate:
        validate()
    return config


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def parse_overrides(pairs: Iterable[str]) -> dict:
    """['a.b=1', 'c=x'] -> {'a': {'b': '1'}, 'c': 'x'}: values stay strings, from_dict coerces them by type."""
    nested: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got '{pair}'", fix="e.g. --set epochs=2")
        key, value = pair.split("=", 1)
        node = nested
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {pair}: '{part}' was already given a value", fix="set either it or its keys")
        node[leaf] = value
    return nested


def _merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(cls: type[T], path: str | Path | None = None, overrides: Iterable[str] = ()) -> T:
    """Defaults ← YAML file ← overrides, validated into `cls`."""
    values: dict = {}
    if path:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file '{path}' does not exist", fix="pass an existing YAML file to --config")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file '{path}' is not valid YAML ({err.__class__.__name__})",
                              fix="check indentation and quoting near the reported line") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file '{path}' must hold a mapping of keys to values")
        values = loaded
    values = _merge(values, parse_overrides(overrides))
    return from_dict(cls, values)


def dump_yaml(config: Any) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


# === Command-line flags (shared by the `moat` CLI and the Beam runner) ===

def add_config_flags(parser) -> None:
    """--config FILE, repeatable --set KEY=VALUE and --print-config on an argparse parser."""
    parser.add_argument("--config", metavar="FILE", help="YAML file with config values (see --print-config)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. --set epochs=2 (repeatable; dots for nested keys)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")


def config_from_args(cls: type[T], args) -> T | None:
    """The config the flags describe, or None after printing it for --print-config."""
    config = load_config(cls, args.config, args.overrides)
    if getattr(args, "print_config", False):
        print(dump_yaml(config), end="")
        return None
    return config
