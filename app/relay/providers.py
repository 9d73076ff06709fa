"""The providers file: which upstreams exist and how each public model routes (P21).

A TOML file (path in PROVIDERS_FILE; `providers.example.toml` documents it):

    [providers.openai]
    kind = "openai"                 # openai | anthropic | openai_compatible
    api_key_env = "OPENAI_API_KEY"  # credential read from the environment

    [[models]]
    name = "gpt-4o-mini"            # the public name clients send
    targets = [ { provider = "openai", model = "gpt-4o-mini" } ]
    price = { input = 0.15, output = 0.60, cache_read = 0.075, cache_write = 0.0 }  # USD per 1M tokens
    max_output = 16384              # most tokens one answer can have (optional; budgets cap requests at it)

Targets are tried in order; the next one only when the previous failed before
any byte reached the client (connect error, timeout, 429, 5xx).
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

KINDS = ("openai", "anthropic", "openai_compatible")
DEFAULT_BASE = {"openai": "https://api.openai.com/v1", "anthropic": "https://api.anthropic.com"}


class ProvidersFileError(Exception):
    """The file is wrong; the message says where (never a credential)."""


@dataclass(frozen=True)
class Provider:
    name: str
    kind: str
    base_url: str
    api_key: str | None = field(repr=False)
    connect_timeout: float = 5.0
    first_byte_timeout: float = 60.0
    read_timeout: float = 120.0

    @property
    def shape(self) -> str:
        """The API shape this provider speaks: "openai" or "anthropic"."""
        return "anthropic" if self.kind == "anthropic" else "openai"

    @property
    def scheme_host_port(self) -> tuple[str, str, int]:
        u = urlsplit(self.base_url)
        return u.scheme, u.hostname or "", u.port or (443 if u.scheme == "https" else 80)

    @property
    def base_path(self) -> str:
        return urlsplit(self.base_url).path.rstrip("/")


@dataclass(frozen=True)
class Price:
    input: Decimal = Decimal(0)
    output: Decimal = Decimal(0)
    cache_read: Decimal = Decimal(0)
    cache_write: Decimal = Decimal(0)

    @property
    def free(self) -> bool:
        return not (self.input or self.output or self.cache_read or self.cache_write)

    def most(self, input_tokens: int, output_tokens: int) -> Decimal:
        """The most a request of at most these tokens can cost: every input token
        at the dearest input rate (fresh, cache read or cache write)."""
        dearest = max(self.input, self.cache_read, self.cache_write)
        return ((dearest * input_tokens + self.output * output_tokens) / Decimal(1_000_000)).quantize(
            Decimal("0.00000001"), rounding="ROUND_UP")

    def cost(self, input_tokens: int, output_tokens: int, cache_read: int, cache_write: int) -> Decimal:
        total = (self.input * input_tokens + self.output * output_tokens
                 + self.cache_read * cache_read + self.cache_write * cache_write)
        return (total / Decimal(1_000_000)).quantize(Decimal("0.00000001"))


@dataclass(frozen=True)
class Target:
    provider: Provider
    model: str


@dataclass(frozen=True)
class Model:
    name: str
    targets: tuple[Target, ...]
    price: Price
    created: int = 0
    max_output: int | None = None  # tokens; None: the deployment's BUDGET_DEFAULT_MAX_OUTPUT


@dataclass
class Registry:
    providers: dict[str, Provider] = field(default_factory=dict)
    models: dict[str, Model] = field(default_factory=dict)

    def model(self, name: str) -> Model | None:
        return self.models.get(name)


def _num(value, where: str) -> Decimal:
    try:
        d = Decimal(str(value))
    except Exception:
        raise ProvidersFileError(f"{where} must be a number") from None
    if d < 0:
        raise ProvidersFileError(f"{where} must not be negative")
    return d


def load(path: str | None, environ=os.environ) -> Registry:
    """Read the providers file. No path, or a missing default file, gives an
    empty registry: the portal runs and the relay answers that no model exists."""
    if not path:
        return Registry()
    p = Path(path)
    if not p.exists():
        raise ProvidersFileError(f"providers file {path} does not exist")
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ProvidersFileError(f"{path} is not valid TOML: {exc}") from None
    reg = Registry()
    for name, spec in (data.get("providers") or {}).items():
        kind = spec.get("kind")
        if kind not in KINDS:
            raise ProvidersFileError(f"providers.{name}.kind must be one of {', '.join(KINDS)}")
        base = spec.get("base_url") or DEFAULT_BASE.get(kind)
        if not base or urlsplit(base).scheme not in ("http", "https"):
            raise ProvidersFileError(f"providers.{name}.base_url must be an http(s) URL")
        env_name = spec.get("api_key_env")
        key = environ.get(env_name) if env_name else None
        if kind != "openai_compatible" and not env_name:
            raise ProvidersFileError(f"providers.{name}.api_key_env is required for kind {kind}")
        reg.providers[name] = Provider(
            name=name, kind=kind, base_url=base.rstrip("/"), api_key=key,
            connect_timeout=float(spec.get("connect_timeout", 5)),
            first_byte_timeout=float(spec.get("first_byte_timeout", 60)),
            read_timeout=float(spec.get("read_timeout", 120)))
    for i, spec in enumerate(data.get("models") or []):
        name = spec.get("name")
        if not name or not isinstance(name, str):
            raise ProvidersFileError(f"models[{i}].name is required")
        targets = []
        for j, t in enumerate(spec.get("targets") or []):
            prov = reg.providers.get(t.get("provider"))
            if prov is None:
                raise ProvidersFileError(f"models[{i}].targets[{j}].provider names no provider")
            targets.append(Target(prov, t.get("model") or name))
        if not targets:
            raise ProvidersFileError(f"models[{i}] ({name}) needs at least one target")
        pr = spec.get("price") or {}
        price = Price(*(_num(pr.get(k, 0), f"models[{i}].price.{k}")
                        for k in ("input", "output", "cache_read", "cache_write")))
        max_output = spec.get("max_output")
        if max_output is not None and (not isinstance(max_output, int) or isinstance(max_output, bool)
                                       or max_output < 1):
            raise ProvidersFileError(f"models[{i}].max_output must be a positive whole number of tokens")
        reg.models[name] = Model(name, tuple(targets), price, int(p.stat().st_mtime), max_output)
    return reg
