"""Settings from the environment (`IMAGEGATE_*`) and the YAML gateway config.

Settings say where things are (config file, Redis, data dir, upstream credentials); the YAML
config says what the gateway offers (upstreams, models, prices, limits). The YAML may reference
environment variables as `${NAME}` or `${NAME:-default}`; the `IMAGEGATE_*` settings with
defaults are visible to it even when not exported, so the shipped config works unchanged.
Both are loaded and validated once at start-up; errors name the file and the bad field.
"""

from __future__ import annotations

import os
import re
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.core.money import to_micro

DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"
DEFAULT_GEMINI_BASE_URL = "https://generativelanguage.googleapis.com/v1beta"


class Settings(BaseSettings):
    """Process settings, read from `IMAGEGATE_*` environment variables."""

    model_config = SettingsConfigDict(env_prefix="IMAGEGATE_", extra="ignore")

    config: str = "config/gateway.yaml"
    redis_url: str | None = None
    data_dir: Path = Path("./data")
    admin_key: str | None = None
    public_base_url: str | None = None
    allow_private_urls: bool = False
    openai_base_url: str = DEFAULT_OPENAI_BASE_URL
    openai_api_key: str | None = None
    gemini_base_url: str = DEFAULT_GEMINI_BASE_URL
    gemini_api_key: str | None = None
    log_level: str = "info"
    log_format: str | None = None  # json | text; unset: text on a terminal, else json
    workers: int | None = None  # in-process task workers; None = config value
    malloc_tuning: bool = True  # see app/core/memory.py

    def interpolation_env(self) -> dict[str, str]:
        """What `${NAME}` in the YAML sees: the settings' values, overlaid by the real env."""
        env = {
            "IMAGEGATE_OPENAI_BASE_URL": self.openai_base_url,
            "IMAGEGATE_OPENAI_API_KEY": self.openai_api_key or "",
            "IMAGEGATE_GEMINI_BASE_URL": self.gemini_base_url,
            "IMAGEGATE_GEMINI_API_KEY": self.gemini_api_key or "",
        }
        env.update(os.environ)
        return env


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CostOverride(_Strict):
    """A channel's own upstream prices for one model; each field given replaces the model's.

    Token prices are USD per million tokens; `per_image` is USD per image, one number or a
    table by size (dall-e-2). See docs/COST.md."""

    text_input_per_mtok: Decimal | None = Field(None, ge=0)
    image_input_per_mtok: Decimal | None = Field(None, ge=0)
    text_output_per_mtok: Decimal | None = Field(None, ge=0)
    image_output_per_mtok: Decimal | None = Field(None, ge=0)
    per_image: Decimal | dict[str, Decimal] | None = None

    @field_validator("per_image")
    @classmethod
    def _per_image(cls, v: Decimal | dict[str, Decimal] | None) -> Any:
        values = v.values() if isinstance(v, dict) else [] if v is None else [v]
        if any(x < 0 for x in values):
            raise ValueError("prices must be >= 0")
        if isinstance(v, dict) and not v:
            raise ValueError("a per-size table needs at least one size")
        return v


class CostConfig(CostOverride):
    """What the upstream charges for a model: token prices (gpt-image, Gemini) and/or a
    per-image price. Without token prices the per-image price is the whole bill (dall-e-2);
    with them it is only the estimate for a request whose upstream reported no usage."""

    @model_validator(mode="after")
    def _complete(self) -> CostConfig:
        tokens = (self.text_input_per_mtok, self.image_input_per_mtok, self.image_output_per_mtok)
        if any(t is not None for t in (*tokens, self.text_output_per_mtok)) and None in tokens:
            raise ValueError(
                "token prices need text_input_per_mtok, image_input_per_mtok and"
                " image_output_per_mtok (text_output_per_mtok is optional)"
            )
        if self.per_image is None:
            raise ValueError("per_image is required (the estimate when no usage is reported)")
        return self

    @property
    def by_tokens(self) -> bool:
        return self.image_output_per_mtok is not None

    def merged(self, override: CostOverride | None) -> CostConfig:
        """These prices with a channel's override applied field by field."""
        if override is None:
            return self
        changes = override.model_dump(exclude_unset=True, exclude_none=True)
        return CostConfig.model_validate(self.model_dump() | changes)


ChannelKind = Literal["openai", "azure-openai", "gemini", "vertex"]


class UpstreamConfig(_Strict):
    """One channel: a provider endpoint with one key or a pool of keys (docs/CHANNELS.md)."""

    kind: ChannelKind
    base_url: str
    api_key: str | None = None
    api_keys: list[str] = Field(default_factory=list)
    weight: int = Field(1, ge=1)
    priority: int = 0
    timeout_s: float = Field(300, gt=0)
    connect_timeout_s: float = Field(10, gt=0)
    max_concurrency: int = Field(64, ge=1)
    retries: int = Field(2, ge=0, le=10)
    backoff_s: float = Field(0.5, ge=0)
    # this channel's upstream prices per model, where they differ from the model's `cost`
    cost: dict[str, CostOverride] = Field(default_factory=dict)
    # the gateway's model name (or its configured upstream id) -> this provider's model id
    model_map: dict[str, str] = Field(default_factory=dict)
    ca_file: str | None = None  # extra CA bundle for a private upstream's TLS certificate
    # azure-openai
    api_version: str | None = None
    deployments: dict[str, str] = Field(default_factory=dict)
    # vertex, service-account form
    project: str | None = None
    location: str | None = None
    credentials_file: str | None = None

    @field_validator("api_key", "api_version", "project", "location", "credentials_file",
                     "ca_file", mode="before")  # fmt: skip
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        return v or None

    @field_validator("api_keys", mode="before")
    @classmethod
    def _drop_empty_keys(cls, v: Any) -> Any:
        return [k for k in v if k] if isinstance(v, list) else v

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"must be an http(s) URL, got {v!r}")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _kind_fields(self) -> UpstreamConfig:
        if self.kind == "azure-openai" and not self.api_version:
            raise ValueError("an azure-openai channel needs api_version")
        service_account = (self.project, self.location, self.credentials_file)
        if any(service_account):
            if self.kind != "vertex":
                raise ValueError("project/location/credentials_file are for vertex channels")
            if not all(service_account):
                raise ValueError("the service-account form needs project, location and "
                                 "credentials_file")  # fmt: skip
            if self.keys:
                raise ValueError("give api_key(s) or a service account, not both")
        for name in ("credentials_file", "ca_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name}: no such file: {path}")
        return self

    @property
    def keys(self) -> list[str]:
        """The key pool: `api_key` first, then `api_keys`, without repeats."""
        pool = ([self.api_key] if self.api_key else []) + self.api_keys
        return list(dict.fromkeys(pool))

    @property
    def service_account(self) -> bool:
        return self.credentials_file is not None


class RoutingConfig(_Strict):
    """How a request moves between channels (docs/CHANNELS.md)."""

    max_attempts: int = Field(3, ge=1, le=20)  # attempts in all, over every channel
    failure_threshold: int = Field(5, ge=1)  # consecutive failures that open a circuit
    cooldown_s: float = Field(30, gt=0)  # first open period; doubles on re-open, at most 600 s
    deadline_s: float = Field(900, gt=0)  # one request's whole upstream time, every attempt


class PriceConfig(_Strict):
    per_image: Decimal | None = Field(None, ge=0)
    per_request: Decimal | None = Field(None, ge=0)
    # Only gpt-image style models have size tiers; without a multiplier every size costs the same.
    other_tier_multiplier: Decimal | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _one_basis(self) -> PriceConfig:
        if (self.per_image is None) == (self.per_request is None):
            raise ValueError("give exactly one of per_image or per_request")
        return self

    @property
    def per_image_micro(self) -> int:
        return to_micro(self.per_image) if self.per_image is not None else 0

    @property
    def per_request_micro(self) -> int:
        return to_micro(self.per_request) if self.per_request is not None else 0


class ModelConfig(_Strict):
    adapter: str
    upstream: str | None = None  # one channel ...
    upstreams: list[str] = Field(default_factory=list)  # ... or several
    upstream_model: str
    price: PriceConfig
    cost: CostConfig | None = None  # what the upstream charges us (docs/COST.md)

    @model_validator(mode="after")
    def _one_form(self) -> ModelConfig:
        if (self.upstream is None) == (not self.upstreams):
            raise ValueError("give upstream (one channel) or upstreams (a list), not both")
        return self

    @property
    def channels(self) -> list[str]:
        return [self.upstream] if self.upstream else list(self.upstreams)


class DefaultsConfig(_Strict):
    rpm: int = Field(60, ge=1)
    max_concurrency: int = Field(8, ge=1)


class LimitsConfig(_Strict):
    """Input limits, enforced while reading (docs/API.md, "Limits")."""

    max_body_bytes: int = Field(220 * 1024 * 1024, ge=1024)
    max_image_bytes: int = Field(50 * 1024 * 1024, ge=1024)
    max_images: int = Field(16, ge=1)
    max_image_pixels: int = Field(50_000_000, ge=1)  # decoded dimension cap (decompression bombs)
    max_json_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    fetch_timeout_s: float = Field(30, gt=0)
    fetch_max_redirects: int = Field(3, ge=0)
    # Image bytes above this size go to a temporary file in `spool_dir` while they arrive
    # (app/media/spool.py); 0 spools every uploaded file.
    spool_threshold_bytes: int = Field(1024 * 1024, ge=0)
    spool_dir: str | None = None  # default <data_dir>/spool
    # false: named temporary files (unlinked at once) even where O_TMPFILE works
    spool_anonymous: bool = True

    @field_validator("spool_dir")
    @classmethod
    def _spool_dir_unset(cls, value: str | None) -> str | None:
        return value or None  # an unset ${VAR} means "the default"


class ResultsConfig(_Strict):
    retention_s: int = Field(86400, ge=1)
    sweep_interval_s: int = Field(600, ge=1)


class StorageConfig(_Strict):
    """Where result images and queued tasks' inputs live (docs/SCALING.md)."""

    kind: Literal["local", "s3"] = "local"
    path: str | None = None  # local: the directory (default <data_dir>/files)
    bucket: str | None = None
    endpoint_url: str | None = None  # any S3-compatible endpoint; empty = AWS for `region`
    region: str | None = None
    prefix: str = ""
    access_key_id: str | None = None  # both omitted or empty: the standard AWS credential chain
    secret_access_key: str | None = None
    url_mode: Literal["proxy", "presign", "public"] = "proxy"
    public_base_url: str | None = None  # url_mode public: results at {this}{prefix}{name}
    timeout_s: float = Field(60, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> StorageConfig:
        for name in ("path", "bucket", "endpoint_url", "region", "access_key_id",
                     "secret_access_key", "public_base_url"):  # fmt: skip
            if getattr(self, name) == "":  # an unset ${VAR} means "omitted"
                setattr(self, name, None)
        if self.kind == "s3" and not self.bucket:
            raise ValueError("storage.bucket is required when storage.kind is s3")
        if self.url_mode == "presign" and self.kind != "s3":
            raise ValueError("storage.url_mode presign needs storage.kind s3")
        if self.url_mode == "public" and not self.public_base_url:
            raise ValueError("storage.public_base_url is required when storage.url_mode is public")
        if self.prefix and not self.prefix.endswith("/"):
            raise ValueError("storage.prefix must end with '/'")
        if bool(self.access_key_id) != bool(self.secret_access_key):
            raise ValueError("storage: give both access_key_id and secret_access_key, or neither")
        return self


class MeteringConfig(_Strict):
    reservation_ttl_s: int = Field(900, ge=1)  # crashed request's hold expires after this
    sweep_interval_s: float = Field(30, gt=0)
    key_cache_ttl_s: float = Field(1.0, ge=0)


class CallbacksConfig(_Strict):
    max_attempts: int = Field(8, ge=1)
    backoff_base_s: float = Field(10, ge=0)
    backoff_max_s: float = Field(600, ge=0)
    timeout_s: float = Field(15, gt=0)


SHIPPED_DEFAULT_MODEL = "gpt-image-1.5"


class TasksConfig(_Strict):
    workers: int = Field(4, ge=0)
    # A task whose worker died runs again this long after its last lease renewal (a live
    # worker renews every lease_s / 3).
    lease_s: float = Field(30, gt=0)
    idempotency_ttl_s: int = Field(86400, ge=1)
    shards: int = Field(8, ge=1, le=1024)  # Redis streams the queue is spread over


class ServerConfig(_Strict):
    # SIGTERM: stop accepting, let in-flight requests and running tasks finish this long, then
    # hand the remaining task leases back and exit 0
    shutdown_grace_s: float = Field(30, ge=0)


class GatewayConfig(_Strict):
    upstreams: dict[str, UpstreamConfig]
    models: dict[str, ModelConfig]
    defaults: DefaultsConfig = DefaultsConfig()
    # The model of a request that names none. Unset: gpt-image-1.5 when configured, else none
    # (such a request is a 400 naming `model`).
    default_model: str | None = None
    limits: LimitsConfig = LimitsConfig()
    results: ResultsConfig = ResultsConfig()
    storage: StorageConfig = StorageConfig()
    metering: MeteringConfig = MeteringConfig()
    callbacks: CallbacksConfig = CallbacksConfig()
    tasks: TasksConfig = TasksConfig()
    routing: RoutingConfig = RoutingConfig()
    server: ServerConfig = ServerConfig()

    @model_validator(mode="after")
    def _references(self) -> GatewayConfig:
        for name, model in self.models.items():
            field = "upstream" if model.upstream else "upstreams"
            for channel in model.channels:
                if channel not in self.upstreams:
                    raise ValueError(f"models.{name}.{field}: unknown upstream {channel!r}")
        if self.default_model is None:
            if SHIPPED_DEFAULT_MODEL in self.models:
                self.default_model = SHIPPED_DEFAULT_MODEL
        elif self.default_model not in self.models:
            raise ValueError(f"default_model: {self.default_model!r} is not in models")
        for up_name, up in self.upstreams.items():
            for model_name, override in up.cost.items():
                where = f"upstreams.{up_name}.cost.{model_name}"
                model_cfg = self.models.get(model_name)
                if model_cfg is None:
                    raise ValueError(f"{where}: unknown model {model_name!r}")
                if model_cfg.cost is None:
                    raise ValueError(f"{where}: models.{model_name} has no cost to override")
                try:
                    model_cfg.cost.merged(override)
                except ValidationError as exc:
                    raise ValueError(f"{where}: {exc.errors()[0]['msg']}") from None
        return self

    def cost_for(self, model: str, channel: str | None) -> CostConfig | None:
        """The upstream prices of `model` when served by `channel` (its override, if any)."""
        model_cfg = self.models.get(model)
        if model_cfg is None or model_cfg.cost is None:
            return None
        up = self.upstreams.get(channel) if channel else None
        return model_cfg.cost.merged(up.cost.get(model) if up is not None else None)


class ConfigError(Exception):
    """The config file is missing, unreadable or invalid; the message names file and field."""


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        value = env.get(m.group(1))
        return value if value else (m.group(2) or "")

    return _VAR.sub(sub, text)


def _packaged_default() -> tuple[str, str]:
    ref = resources.files("app") / "defaults" / "gateway.yaml"
    return ref.read_text(encoding="utf-8"), "<packaged defaults>"


def load_config(settings: Settings, path: str | Path | None = None) -> GatewayConfig:
    """Read, interpolate and validate the YAML config.

    An explicitly named file must exist; the default path falls back to the packaged copy so
    `imagegate serve` works from any directory.
    """
    explicit = path is not None or "IMAGEGATE_CONFIG" in os.environ
    file = Path(path if path is not None else settings.config)
    if file.is_file():
        text, origin = file.read_text(encoding="utf-8"), str(file)
    elif explicit:
        raise ConfigError(f"{file}: config file not found")
    else:
        text, origin = _packaged_default()
    return parse_config(text, settings, origin)


def parse_config(text: str, settings: Settings, origin: str = "<string>") -> GatewayConfig:
    try:
        raw = yaml.safe_load(interpolate(text, settings.interpolation_env()))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: the top level must be a mapping")
    try:
        return GatewayConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"{origin}: {problems}") from exc
