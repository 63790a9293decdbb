"""Settings and the YAML config: shipped copies, interpolation, and errors that name file and
field."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.core.config import (
    DEFAULT_GEMINI_BASE_URL,
    DEFAULT_OPENAI_BASE_URL,
    ConfigError,
    GatewayConfig,
    Settings,
    interpolate,
    load_config,
    parse_config,
)

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "config" / "gateway.yaml"
PACKAGED = ROOT / "app" / "defaults" / "gateway.yaml"

ENV_VARS = [
    "IMAGEGATE_CONFIG",
    "IMAGEGATE_REDIS_URL",
    "IMAGEGATE_DATA_DIR",
    "IMAGEGATE_ADMIN_KEY",
    "IMAGEGATE_PUBLIC_BASE_URL",
    "IMAGEGATE_ALLOW_PRIVATE_URLS",
    "IMAGEGATE_OPENAI_BASE_URL",
    "IMAGEGATE_OPENAI_API_KEY",
    "IMAGEGATE_GEMINI_BASE_URL",
    "IMAGEGATE_GEMINI_API_KEY",
    "IMAGEGATE_LOG_LEVEL",
    "IMAGEGATE_WORKERS",
]

ALL_MODELS = {
    "gpt-image-1",
    "gpt-image-1-mini",
    "gpt-image-1.5",
    "gpt-image-2",
    "dall-e-2",
    "nano-banana",
    "nano-banana-2",
    "nano-banana-pro",
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


def minimal(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "upstreams": {"openai": {"kind": "openai", "base_url": "http://up.example/v1"}},
        "models": {
            "m": {
                "adapter": "gpt-image",
                "upstream": "openai",
                "upstream_model": "m",
                "price": {"per_image": 0.1},
            }
        },
        "default_model": "m",
    }
    raw.update(overrides)
    return raw


def parse(raw: dict[str, Any], origin: str = "test.yaml") -> GatewayConfig:
    return parse_config(yaml.safe_dump(raw), Settings(), origin)


# --- the shipped config ---------------------------------------------------------------------
def test_shipped_and_packaged_copies_are_identical() -> None:
    # app/defaults/gateway.yaml is the source; `make config` copies it to config/gateway.yaml.
    assert SHIPPED.read_bytes() == PACKAGED.read_bytes(), (
        "config/gateway.yaml differs from app/defaults/gateway.yaml: edit the packaged file, "
        "then run `make config`"
    )


@pytest.mark.parametrize("path", [SHIPPED, PACKAGED])
def test_shipped_config_loads(path: Path) -> None:
    config = load_config(Settings(), path)
    assert set(config.models) == ALL_MODELS
    assert config.default_model == "gpt-image-1.5"
    assert config.defaults.rpm == 60 and config.defaults.max_concurrency == 8
    assert config.tasks.lease_s == 30  # a dead worker's tasks run again within ~30 s
    assert config.upstreams["openai"].base_url == DEFAULT_OPENAI_BASE_URL
    assert config.upstreams["gemini"].base_url == DEFAULT_GEMINI_BASE_URL
    assert config.upstreams["openai"].api_key is None  # "${...}" of an unset var → no key
    assert config.models["gpt-image-2"].price.per_image == Decimal("0.20")
    assert config.models["gpt-image-2"].price.other_tier_multiplier == Decimal("1.5")
    assert config.models["nano-banana"].upstream_model == "gemini-2.5-flash-image"
    assert config.models["nano-banana-2"].upstream_model == "gemini-3.1-flash-image"
    assert config.models["nano-banana-pro"].upstream_model == "gemini-3-pro-image"
    prices = {m: config.models[m].price.per_request_micro for m in ALL_MODELS if "nano" in m}
    assert prices == {"nano-banana": 140_000, "nano-banana-2": 280_000, "nano-banana-pro": 350_000}


def test_default_path_falls_back_to_the_packaged_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no config/gateway.yaml here
    config = load_config(Settings())
    assert set(config.models) == ALL_MODELS


def test_imagegate_config_env_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(minimal()))
    monkeypatch.setenv("IMAGEGATE_CONFIG", str(path))
    assert set(load_config(Settings()).models) == {"m"}
    monkeypatch.setenv("IMAGEGATE_CONFIG", str(tmp_path / "absent.yaml"))
    with pytest.raises(ConfigError, match=r"absent\.yaml: config file not found"):
        load_config(Settings())


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as exc:
        load_config(Settings(), missing)
    assert str(missing) in str(exc.value) and "not found" in str(exc.value)


# --- interpolation --------------------------------------------------------------------------
def test_interpolate_forms() -> None:
    env = {"A": "alpha", "EMPTY": ""}
    assert interpolate("${A}", env) == "alpha"
    assert interpolate("x-${A}-y", env) == "x-alpha-y"
    assert interpolate("${MISSING}", env) == ""
    assert interpolate("${MISSING:-dflt}", env) == "dflt"
    assert interpolate("${EMPTY:-dflt}", env) == "dflt"
    assert interpolate("${A:-dflt}", env) == "alpha"
    assert interpolate("${MISSING:-}", env) == ""
    assert interpolate("$A and ${not valid}", env) == "$A and ${not valid}"


def test_env_interpolation_in_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = """
upstreams:
  openai: {kind: openai, base_url: "${MY_BASE:-http://fallback.example/v1}",
           api_key: "${MY_KEY}", retries: ${MY_RETRIES:-3}}
models:
  m: {adapter: gpt-image, upstream: openai, upstream_model: "${MY_MODEL:-up-m}",
      price: {per_image: 0.1}}
default_model: m
"""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    config = load_config(Settings(), path)
    up = config.upstreams["openai"]
    assert (up.base_url, up.api_key, up.retries) == ("http://fallback.example/v1", None, 3)
    assert config.models["m"].upstream_model == "up-m"

    monkeypatch.setenv("MY_BASE", "https://real.example/v1/")
    monkeypatch.setenv("MY_KEY", "sk-123")
    monkeypatch.setenv("MY_RETRIES", "5")
    monkeypatch.setenv("MY_MODEL", "up-2")
    config = load_config(Settings(), path)
    up = config.upstreams["openai"]
    assert (up.base_url, up.api_key, up.retries) == ("https://real.example/v1", "sk-123", 5)
    assert config.models["m"].upstream_model == "up-2"


def test_imagegate_defaults_visible_without_export(monkeypatch: pytest.MonkeyPatch) -> None:
    text = SHIPPED.read_text()
    config = parse_config(text, Settings())
    assert config.upstreams["openai"].base_url == DEFAULT_OPENAI_BASE_URL
    assert config.upstreams["gemini"].base_url == DEFAULT_GEMINI_BASE_URL
    # a Settings value (not exported) is seen by the YAML ...
    settings = Settings(openai_base_url="http://set.example/v1", gemini_api_key="g-key")
    config = parse_config(text, settings)
    assert config.upstreams["openai"].base_url == "http://set.example/v1"
    assert config.upstreams["gemini"].api_key == "g-key"
    # ... and an exported variable as well
    monkeypatch.setenv("IMAGEGATE_OPENAI_API_KEY", "sk-env")
    monkeypatch.setenv("IMAGEGATE_GEMINI_BASE_URL", "http://gem.example/v1beta")
    config = parse_config(text, Settings())
    assert config.upstreams["openai"].api_key == "sk-env"
    assert config.upstreams["gemini"].base_url == "http://gem.example/v1beta"


# --- errors name the file and the field -----------------------------------------------------
def test_unknown_upstream_referenced_by_a_model() -> None:
    raw = minimal()
    raw["models"]["m"]["upstream"] = "azure"
    with pytest.raises(ConfigError) as exc:
        parse(raw, "conf/a.yaml")
    msg = str(exc.value)
    assert msg.startswith("conf/a.yaml: ")
    assert "models.m.upstream" in msg and "'azure'" in msg


def test_lease_default_is_30_s() -> None:
    assert parse(minimal()).tasks.lease_s == 30


def test_no_default_model_and_no_gpt_image_1_5_starts() -> None:
    raw = minimal()
    del raw["default_model"]
    assert parse(raw).default_model is None  # a request without `model` is a 400 then


def test_default_model_unset_means_gpt_image_1_5_when_configured() -> None:
    raw = minimal()
    del raw["default_model"]
    raw["models"]["gpt-image-1.5"] = raw["models"]["m"]
    assert parse(raw).default_model == "gpt-image-1.5"


def test_default_model_not_in_models() -> None:
    with pytest.raises(ConfigError) as exc:
        parse(minimal(default_model="gpt-9"), "b.yaml")
    msg = str(exc.value)
    assert msg.startswith("b.yaml: ") and "default_model" in msg and "'gpt-9'" in msg


def test_both_per_image_and_per_request() -> None:
    raw = minimal()
    raw["models"]["m"]["price"] = {"per_image": 0.1, "per_request": 0.2}
    with pytest.raises(ConfigError) as exc:
        parse(raw, "c.yaml")
    msg = str(exc.value)
    assert msg.startswith("c.yaml: ") and "models.m.price" in msg
    assert "exactly one of per_image or per_request" in msg


def test_neither_per_image_nor_per_request() -> None:
    raw = minimal()
    raw["models"]["m"]["price"] = {}
    with pytest.raises(ConfigError, match=r"models\.m\.price.*exactly one"):
        parse(raw)


def test_negative_price() -> None:
    raw = minimal()
    raw["models"]["m"]["price"] = {"per_image": -1}
    with pytest.raises(ConfigError, match=r"models\.m\.price\.per_image"):
        parse(raw)


@pytest.mark.parametrize("url", ["ftp://up.example", "up.example/v1", ""])
def test_bad_upstream_url(url: str) -> None:
    raw = minimal()
    raw["upstreams"]["openai"]["base_url"] = url
    with pytest.raises(ConfigError) as exc:
        parse(raw, "d.yaml")
    msg = str(exc.value)
    assert msg.startswith("d.yaml: ") and "upstreams.openai.base_url" in msg
    assert "http(s) URL" in msg


def test_unknown_upstream_kind() -> None:
    raw = minimal()
    raw["upstreams"]["openai"]["kind"] = "azure"
    with pytest.raises(ConfigError, match=r"upstreams\.openai\.kind"):
        parse(raw)


def test_unknown_top_level_field() -> None:
    with pytest.raises(ConfigError) as exc:
        parse(minimal(modles={}), "e.yaml")
    msg = str(exc.value)
    assert msg.startswith("e.yaml: ") and "modles" in msg and "not permitted" in msg


def test_unknown_nested_field() -> None:
    raw = minimal()
    raw["models"]["m"]["prcie"] = 1
    with pytest.raises(ConfigError, match=r"models\.m\.prcie"):
        parse(raw)


def test_bad_limit_value() -> None:
    with pytest.raises(ConfigError, match=r"defaults\.rpm"):
        parse(minimal(defaults={"rpm": 0}))


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string", "42", ""])
def test_not_a_mapping(text: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(text, Settings(), "f.yaml")
    assert str(exc.value) == "f.yaml: the top level must be a mapping"


def test_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("upstreams: {openai: [unclosed\nmodels: x\n")
    with pytest.raises(ConfigError) as exc:
        load_config(Settings(), path)
    msg = str(exc.value)
    assert msg.startswith(f"{path}: not valid YAML")


def test_errors_from_a_file_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(minimal(default_model="nope")))
    with pytest.raises(ConfigError) as exc:
        load_config(Settings(), path)
    assert str(exc.value).startswith(f"{path}: ") and "default_model" in str(exc.value)


def test_empty_api_key_is_none_and_url_slash_stripped() -> None:
    raw = minimal()
    raw["upstreams"]["openai"].update(api_key="", base_url="http://up.example/v1///")
    up = parse(raw).upstreams["openai"]
    assert up.api_key is None and up.base_url == "http://up.example/v1"


# --- Settings from the environment ----------------------------------------------------------
def test_settings_defaults() -> None:
    s = Settings()
    assert s.config == "config/gateway.yaml"
    assert s.redis_url is None
    assert s.data_dir == Path("./data")
    assert s.admin_key is None and s.public_base_url is None
    assert s.allow_private_urls is False
    assert s.openai_base_url == DEFAULT_OPENAI_BASE_URL and s.openai_api_key is None
    assert s.gemini_base_url == DEFAULT_GEMINI_BASE_URL and s.gemini_api_key is None


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = {
        "IMAGEGATE_CONFIG": "/etc/imagegate.yaml",
        "IMAGEGATE_REDIS_URL": "redis://r:6379/1",
        "IMAGEGATE_DATA_DIR": str(tmp_path),
        "IMAGEGATE_ADMIN_KEY": "adm",
        "IMAGEGATE_PUBLIC_BASE_URL": "https://img.example",
        "IMAGEGATE_ALLOW_PRIVATE_URLS": "true",
        "IMAGEGATE_OPENAI_BASE_URL": "http://o.example/v1",
        "IMAGEGATE_OPENAI_API_KEY": "sk-o",
        "IMAGEGATE_GEMINI_BASE_URL": "http://g.example/v1beta",
        "IMAGEGATE_GEMINI_API_KEY": "g-k",
        "IMAGEGATE_LOG_LEVEL": "debug",
        "IMAGEGATE_UNRELATED": "ignored",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = Settings()
    assert s.config == "/etc/imagegate.yaml"
    assert s.redis_url == "redis://r:6379/1"
    assert s.data_dir == tmp_path
    assert s.admin_key == "adm"
    assert s.public_base_url == "https://img.example"
    assert s.allow_private_urls is True
    assert (s.openai_base_url, s.openai_api_key) == ("http://o.example/v1", "sk-o")
    assert (s.gemini_base_url, s.gemini_api_key) == ("http://g.example/v1beta", "g-k")
    assert s.log_level == "debug"
    seen = s.interpolation_env()
    assert seen["IMAGEGATE_OPENAI_API_KEY"] == "sk-o"
    assert seen["IMAGEGATE_GEMINI_BASE_URL"] == "http://g.example/v1beta"


@pytest.mark.parametrize(
    ("raw", "value"), [("1", True), ("yes", True), ("false", False), ("0", False)]
)
def test_settings_booleans(monkeypatch: pytest.MonkeyPatch, raw: str, value: bool) -> None:
    monkeypatch.setenv("IMAGEGATE_ALLOW_PRIVATE_URLS", raw)
    assert Settings().allow_private_urls is value


def test_settings_bad_boolean(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEGATE_ALLOW_PRIVATE_URLS", "maybe")
    with pytest.raises(ValueError, match="allow_private_urls"):
        Settings()


def test_channel_fields_are_checked_with_the_channel_named() -> None:
    raw = minimal()
    raw["upstreams"]["openai"]["kind"] = "azure-openai"  # without api_version
    with pytest.raises(ConfigError, match=r"upstreams\.openai.*api_version"):
        parse(raw)
    raw = minimal()
    raw["upstreams"]["openai"].update(kind="vertex", api_key="", project="p", location="l",
                                      credentials_file="/nonexistent/sa.json")  # fmt: skip
    with pytest.raises(ConfigError, match=r"credentials_file: no such file"):
        parse(raw)
    raw = minimal()
    raw["upstreams"]["openai"].update(kind="vertex", project="p")
    with pytest.raises(ConfigError, match=r"project, location and credentials_file"):
        parse(raw)
    raw = minimal()
    name = next(iter(raw["models"]))
    raw["models"][name]["upstreams"] = ["openai"]
    with pytest.raises(ConfigError, match=r"upstream .*upstreams.*not both"):
        parse(raw)
    del raw["models"][name]["upstream"]
    raw["models"][name]["upstreams"] = ["openai", "nowhere"]
    with pytest.raises(ConfigError, match=r"upstreams: unknown upstream 'nowhere'"):
        parse(raw)
    raw["models"][name]["upstreams"] = ["openai"]
    parse(raw)  # a list of one is fine
