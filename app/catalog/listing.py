"""What the Models page and the quick starts say about the deployment's models,
read from the relay's registry (the providers file). Only what a client may
know: public names, prices, API shapes and the *names* of the providers a
model falls back to, never a base URL, an upstream credential or its variable."""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from flask import current_app

from app.relay.providers import Model, Registry

CHAT = "chat"            # POST /v1/chat/completions (OpenAI SDK)
MESSAGES = "messages"    # POST /v1/messages (Anthropic SDK)
EMBEDDINGS = "embeddings"  # POST /v1/embeddings (OpenAI SDK)
API_LABELS = {CHAT: "OpenAI chat completions", MESSAGES: "Anthropic messages", EMBEDDINGS: "OpenAI embeddings"}
API_PATHS = {CHAT: "/v1/chat/completions", MESSAGES: "/v1/messages", EMBEDDINGS: "/v1/embeddings"}


@dataclass(frozen=True)
class Entry:
    name: str
    input: Decimal        # USD per million tokens, as the price table says
    output: Decimal
    cache_read: Decimal
    cache_write: Decimal
    apis: tuple[str, ...]
    providers: tuple[str, ...]  # the route in order: first is tried first, the rest are fallbacks
    first_shape: str            # "openai" or "anthropic": the API the first target speaks natively

    @property
    def fallbacks(self) -> tuple[str, ...]:
        return self.providers[1:]


def registry() -> Registry:
    return current_app.extensions.get("relay_registry") or Registry()


def is_embedding(model: Model) -> bool:
    """The providers file does not say what a model does, so the name tells:
    embedding models are named so by every provider (text-embedding-3-small,
    nomic-embed-text, mxbai-embed-large...)."""
    return any("embed" in n.lower() for n in (model.name, *(t.model for t in model.targets)))


def apis_of(model: Model) -> tuple[str, ...]:
    """The API shapes the relay answers for a model. It translates chat between
    the OpenAI and Anthropic shapes both ways, so a chat model answers both;
    embeddings go only to an OpenAI-shaped provider (the relay skips others)."""
    if is_embedding(model):
        return (EMBEDDINGS,) if any(t.provider.shape == "openai" for t in model.targets) else ()
    return (CHAT, MESSAGES)


def entries() -> list[Entry]:
    out = []
    models = registry().models
    for name in sorted(models):
        m = models[name]
        names = tuple(dict.fromkeys(t.provider.name for t in m.targets))
        out.append(Entry(name, m.price.input, m.price.output, m.price.cache_read, m.price.cache_write,
                         apis_of(m), names, m.targets[0].provider.shape if m.targets else "openai"))
    return out


def quickstart_models() -> dict[str, str | None]:
    """The model each copy-paste snippet names: a chat model this deployment
    offers, preferring one whose first provider speaks the snippet's API
    natively (no translation); None when no chat model is configured."""
    every = entries()
    chat = [e for e in every if CHAT in e.apis]
    embed = [e for e in every if EMBEDDINGS in e.apis]

    def pick(shape: str) -> str | None:
        best = [e for e in chat if e.first_shape == shape] or chat
        return best[0].name if best else None

    return {"openai": pick("openai"), "anthropic": pick("anthropic"),
            "embeddings": embed[0].name if embed else None}


def money(value: Decimal) -> str:
    """$0.15, $3.00, $0.075: cents always, more digits only when the table has them."""
    if value == 0:
        return "$0"
    text = format(value.normalize(), "f")
    whole, _, frac = text.partition(".")
    return f"${whole}.{frac.ljust(2, '0')}"
