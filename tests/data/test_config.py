import dataclasses
from typing import Literal

import pytest

from moatkit.data.core.config import dump_yaml, load_config, parse_overrides
from moatkit.data.core.errors import ConfigError


@dataclasses.dataclass
class Inner:
    rate: float = 0.1
    mode: Literal["fast", "exact"] = "fast"


@dataclasses.dataclass
class Outer:
    name: str = "x"
    epochs: int = 1
    limit: int | None = None
    flag: bool = False
    tags: list[str] = dataclasses.field(default_factory=list)
    inner: Inner = dataclasses.field(default_factory=Inner)


def test_defaults_file_and_overrides_in_precedence_order(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 3\ninner:\n  rate: 0.5\n  mode: exact\n")
    config = load_config(Outer, path, ["epochs=7", "limit=12", "flag=true", "tags=[a, b]", "inner.rate=2e-5"])
    assert config == Outer(name="x", epochs=7, limit=12, flag=True, tags=["a", "b"], inner=Inner(2e-5, "exact"))


def test_yaml_round_trip(tmp_path):
    config = Outer(epochs=4, limit=None, tags=["q"], inner=Inner(0.25, "exact"))
    path = tmp_path / "c.yaml"
    path.write_text(dump_yaml(config))
    assert load_config(Outer, path) == config


@pytest.mark.parametrize("overrides, message", [
    (["epoch=2"], "unknown config key 'epoch'"),
    (["inner.speed=2"], "unknown config key 'inner.speed'"),
    (["epochs=two"], "config key 'epochs': got 'two', expected int"),
    (["inner.mode=slow"], "config key 'inner.mode': got 'slow', expected one of 'fast', 'exact'"),
    (["limit=abc"], "config key 'limit': got 'abc', expected int or null"),
    (["flag=maybe"], "config key 'flag': got 'maybe', expected bool"),
    (["epochs"], "--set expects key=value"),
])
def test_errors_name_the_key_and_what_is_allowed(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(Outer, None, overrides)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_unknown_key_lists_allowed_keys():
    with pytest.raises(ConfigError, match="allowed keys: name, epochs, limit, flag, tags, inner"):
        load_config(Outer, None, ["nope=1"])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Outer, bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(Outer, scalar)


def test_parse_overrides_nests_dotted_keys():
    assert parse_overrides(["a.b.c=1", "a.d=x", "e="]) == {"a": {"b": {"c": "1"}, "d": "x"}, "e": ""}
    with pytest.raises(ConfigError, match="'a' was already given a value"):
        parse_overrides(["a=1", "a.b=2"])


def test_string_values_are_kept_verbatim():
    config = load_config(Outer, None, ["name=0123", "tags=a wonderful, moving film"])
    assert config.name == "0123" and config.tags == ["a wonderful, moving film"]
    assert load_config(Outer, None, ["name=@x: [1,"]).name == "@x: [1,"


def test_validate_hook_runs():
    from moatkit.models.finetune import FinetuneConfig
    with pytest.raises(ConfigError, match="max_length"):
        load_config(FinetuneConfig, None, ["max_length=1024"])
    with pytest.raises(ConfigError, match="split fractions"):
        load_config(FinetuneConfig, None, ["split.test=0.95"])


def test_shipped_demo_config_matches_the_embedded_defaults():
    from pathlib import Path

    from moatkit.app.pipeline import DemoConfig
    shipped = Path(__file__).resolve().parents[2] / "app" / "configs" / "demo.yaml"
    assert load_config(DemoConfig, shipped) == DemoConfig()


def test_shipped_translation_config_matches_the_embedded_defaults():
    from pathlib import Path

    from moatkit.models.seq2seq.train import Seq2SeqConfig
    shipped = Path(__file__).resolve().parents[2] / "app" / "configs" / "translate-de-en.yaml"
    assert load_config(Seq2SeqConfig, shipped) == Seq2SeqConfig()


@dataclasses.dataclass
class _Slices:
    golden: dict[str, str] = dataclasses.field(default_factory=dict)
    floors: dict[str, float] = dataclasses.field(default_factory=dict)


def test_dict_keys_are_set_one_by_one_or_whole():
    config = load_config(_Slices, overrides=["golden.original=/data/test", "golden.amazon=/data/amazon",
                                             "floors.amazon=0.8"])
    assert config.golden == {"original": "/data/test", "amazon": "/data/amazon"} and config.floors == {"amazon": 0.8}
    assert load_config(_Slices, overrides=["floors={a: 1, b: 0.5}"]).floors == {"a": 1.0, "b": 0.5}
    with pytest.raises(ConfigError, match="floors.amazon"):
        load_config(_Slices, overrides=["floors.amazon=high"])
