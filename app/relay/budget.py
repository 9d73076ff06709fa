"""The budget stage (P26): hold the most a request can cost before it is forwarded.

What a request can cost at most is known before it goes upstream:

* input: no more tokens than the body has bytes (a token is at least one byte
  of text), plus IMAGE_TOKENS for each image part, priced at the model's
  dearest input rate (fresh, cache read or cache write);
* output: the client's own cap (`max_tokens`, `max_completion_tokens`,
  `max_output_tokens`); when it set none, the model's `max_output` from the
  providers file (else BUDGET_DEFAULT_MAX_OUTPUT), which the relay then
  writes into the request, so the provider cannot answer more than was held.

`app/services/spend.py` holds that amount against every limit that applies,
atomically; the usage writer settles it to the real cost. A request that does
not fit is answered 402 in the client's API shape, naming the limit, and never
reaches a provider. Keys with no budget and no prepaid wallet skip all of
this: the key lookup already said so, at no extra query.
"""
from __future__ import annotations

from app.models.billing import to_units, to_usd
from app.relay.call import Call, Refusal
from app.services import spend

IMAGE_TOKENS = 2_000  # more than either provider counts for one image at its largest size


def admit(call: Call) -> None:
    """Which limits apply and the most the request can cost (no I/O: `hold` takes it)."""
    if not call.metered:
        return
    key, ext = call.key, call.req.environ["relay.extensions"]
    prepaid = ext["billing_prepaid"]
    limits = spend.limits_of(key.budgets, call.started) if key.budgets else []
    if not limits and not prepaid:
        return
    model, family = call.resolved, call.shape.family
    if model.price.free:
        raise Refusal(400, f"The model '{call.model}' has no price, so it cannot be used while a spending "
                           "limit or a prepaid balance applies.", error_class="budget_unpriced")
    if prepaid and key.wallet_id is None:
        raise Refusal(402, "There is no prepaid balance to pay for this request. Top up on the Billing page.",
                      family.billing_type, error_class="budget_wallet")
    cap = call.shape.output_cap(call.body)
    if cap is None:
        cap = model.max_output or ext["billing_default_max_output"]
        call.body[call.shape.output_fields[0]] = cap
    call.output_cap = cap
    most = to_units(model.price.most(call.body_bytes + IMAGE_TOKENS * image_parts(call.body), cap))
    call.hold_wanted = (limits, key.wallet_id if prepaid else None, most)


def image_parts(body: dict) -> int:
    """Content parts that are images ("image_url", "image", "input_image"), at any
    depth: counted only for a request a budget applies to, never on every request."""
    n, stack = 0, [body]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            kind = item.get("type")
            if isinstance(kind, str) and "image" in kind:
                n += 1
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return n


def hold(call: Call) -> None:
    """Take the hold `admit` worked out (a database transaction: the ASGI transport
    runs it on a thread, so a SQLite write lock never stalls the event loop)."""
    limits, wallet_id, most = call.hold_wanted
    over = spend.reserve(call.req.environ["relay.extensions"]["relay_engine"], call.request_id, limits, wallet_id,
                         most, call.started)
    if over is not None:
        raise Refusal(402, _message(over, most, call), call.shape.family.billing_type, error_class=over.error_class)
    call.hold = call.hold_wanted


def settled(call: Call) -> None:
    """Shrink the hold to the call's real cost (the usage writer settles the rest with its row).

    A cost above the hold can only come from a provider's count above what the
    request could use (its error, or images beyond IMAGE_TOKENS): it is charged
    at the hold, so no limit is ever passed."""
    limits, wallet_id, most = call.hold
    cost = to_units(call.cost)
    if cost > most:
        call.cost, cost = to_usd(most), most
    spend.settle_later(call.req.environ["relay.extensions"]["relay_engine"], call.request_id, limits, wallet_id,
                       most, cost)


def _message(over: spend.Over, most: int, call: Call) -> str:
    cost, left = spend.describe_units(most), spend.describe_units(over.left_units)
    if over.limit is None:
        return (f"This request could cost up to {cost}, more than the prepaid balance has left ({left}). "
                "Top up on the Billing page.")
    lim = over.limit
    renews = ""
    if lim.period != spend.TOTAL:
        renews = f"; it renews on {spend.next_month(call.started):%Y-%m-%d}"
    return (f"This request could cost up to {cost}, more than is left of {lim.describe()} "
            f"({left} of {spend.describe_units(lim.limit_units)}{renews}). Raise the budget on the Billing "
            "page, or ask for fewer output tokens.")
