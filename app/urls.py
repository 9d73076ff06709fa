"""The one public address of the portal, for every page and mail that prints one.

A person copies the relay's address from the keys page, the usage page's
quick start or a mail; it must be the address they reached the portal on, not
the default of a setting nobody set. So: the BASE_URL setting when the
deployment set it; otherwise the origin of the request being answered
(`request.host_url`, which the ProxyFix of app/security.py corrects behind
TRUSTED_PROXIES proxies); otherwise (a mail queued by a job, the CLI) the
setting's default. The request's address is used only when its host is
vouched for (ALLOWED_HOSTS, or loopback): never a forged Host header's.
"""
from __future__ import annotations

from flask import current_app, has_request_context, request, url_for

LOOPBACK = {"localhost", "127.0.0.1", "::1", "[::1]"}


def _vouched_host(host: str) -> bool:
    """A host whose address may be printed: one the deployment listed in
    ALLOWED_HOSTS (Flask then refuses every other), or loopback. Anything else
    could be a forged Host header aiming a reset link at the forger's site."""
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.lower()
    return name in LOOPBACK or name in current_app.config.get("ALLOWED_HOSTS", [])


def public_base_url() -> str:
    """The portal's public origin, without a trailing slash (e.g. "https://relay.example.org")."""
    cfg = current_app.config
    if cfg.get("BASE_URL_EXPLICIT", True) or not has_request_context() or not _vouched_host(request.host):
        return cfg["BASE_URL"].rstrip("/")
    return request.host_url.rstrip("/")


def public_url(endpoint: str, **values) -> str:
    """An absolute link to `endpoint` on the public origin; works outside a request too."""
    if has_request_context():
        return public_base_url() + url_for(endpoint, **values)
    with current_app.test_request_context():
        return current_app.config["BASE_URL"].rstrip("/") + url_for(endpoint, **values)


def relay_urls() -> dict[str, str]:
    """Where SDKs point: the OpenAI SDK takes the origin plus /v1, the Anthropic SDK the origin."""
    root = public_base_url()
    return {"base_url": root + "/v1", "root_url": root}
