"""Security headers on every response (P02: nothing loads from another origin),
and which reverse proxies are believed about the client's address and scheme."""
from flask import Flask, request
from werkzeug.middleware.proxy_fix import ProxyFix

CSP = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "font-src 'self'",
    "connect-src 'self'",
    "form-action 'self'",
    "base-uri 'none'",
    "object-src 'none'",
    "frame-ancestors 'none'",
])


def csp_allowing_forms_to(*origins: str) -> str:
    """The policy, with forms also allowed to go to (or be redirected to) these
    origins: a page whose form is answered with a redirect to a payment page."""
    return CSP.replace("form-action 'self'", " ".join(["form-action 'self'", *origins]))


def init_app(app: Flask) -> None:
    trust_proxies(app)
    if app.config.get("ALLOWED_HOSTS"):
        # Flask answers 400 to a request naming any other host (loopback stays, for health checks).
        app.config["TRUSTED_HOSTS"] = [*app.config["ALLOWED_HOSTS"], "localhost", "127.0.0.1", "::1"]

    @app.after_request
    def headers(resp):
        h = resp.headers  # (/v1/ is answered before Flask, by RelayDispatch, with nosniff only)
        h.setdefault("Content-Security-Policy", CSP)
        h.setdefault("X-Content-Type-Options", "nosniff")
        h.setdefault("Referrer-Policy", "same-origin")
        h.setdefault("X-Frame-Options", "DENY")
        h.setdefault("Cross-Origin-Opener-Policy", "same-origin")
        h.setdefault("Permissions-Policy", "camera=(), microphone=(), geolocation=(), interest-cohort=()")
        if request.is_secure:
            h.setdefault("Strict-Transport-Security", "max-age=63072000; includeSubDomains")
        if resp.mimetype == "text/html":
            # Pages can hold account data and one-time secrets: keep them out of caches.
            h.setdefault("Cache-Control", "no-store")
        return resp


def trust_proxies(app: Flask) -> None:
    """Behind TRUSTED_PROXIES reverse proxies, take the client's address, scheme
    and host from the X-Forwarded-For/-Proto/-Host values those proxies added.

    Without it, behind the documented HTTPS proxy every client has the proxy's
    address, so one person's failed logins throttle everyone, and every request
    looks like plain http, so HSTS is never sent. Only as many hops as the
    setting says are believed, counted from the right (the values the nearest
    proxies appended), so a client cannot choose its own address by sending the
    header itself. With 0 (the default) the headers are ignored: a server
    reachable directly must not believe them. The host matters too: Flask-WTF
    compares an HTTPS form's Referer with it. The relay's dispatcher, installed
    later, wraps this in turn and answers /v1/ without looking at addresses."""
    hops = int(app.config.get("TRUSTED_PROXIES") or 0)
    if hops > 0:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)
