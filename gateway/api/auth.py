"""Gateway API keys -> tenants. A key's calls bill its tenant; admin keys may act for others."""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Hashable, Mapping
from dataclasses import dataclass

from aiohttp import web

from gateway.api.access import Access
from gateway.api.browser_guard import refuse_browser_cross_site
from gateway.errors import AuthenticationFailed, GatewayError, PermissionDenied
from gateway.safe_text import log_value
from gateway.settings import ApiKey
from gateway.windowed_log import WindowedLog

log = logging.getLogger("gateway.auth")


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str
    admin: bool
    key_id: str | None  # a short digest of the key, never the key itself
    #: the models and providers the key may use (None: any)
    access: Access | None = None
    #: the metadata pairs on every call of the key (``gateway/api/metadata.py``; None: none)
    metadata: Mapping[str, str] | None = None


def _key_bytes(key: str) -> bytes:
    """The key's bytes as the client sent them: a header that is not UTF-8 reaches us with its
    bytes escaped as surrogates (aiohttp), and simply matches no key."""
    return key.encode("utf-8", "surrogateescape")


def key_id(key: str) -> str:
    return "key_" + hashlib.sha256(_key_bytes(key)).hexdigest()[:12]


def _presented_key(request: web.Request) -> str | None:
    headers = request.headers
    key = headers.get("x-api-key") or headers.get("api-key")
    header = headers.get("authorization")
    # two of one header: which one would count? The first won, silently (a review)
    for name in ("authorization", "x-api-key", "api-key") if key is not None else ("authorization",):
        if len(headers.getall(name, ())) > 1:
            raise AuthenticationFailed(f"More than one {name!r} header: send one", param=name)
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            if key and key != token.strip():  # two keys: which one counts? (a re-test)
                raise AuthenticationFailed("Two different API keys (Authorization and x-api-key): send one")
            return token.strip()
        if not key:
            raise AuthenticationFailed(
                "Malformed Authorization header: send 'Authorization: Bearer <key>'", param="authorization"
            )
    return key


class Authenticator:
    """With no keys configured the gateway is open (local use): every caller is an admin of the
    default tenant and may name any tenant in the body."""

    def __init__(self, keys: list[ApiKey], default_tenant: str, *, loopback: bool = False) -> None:
        """``loopback``: the service listens on loopback only (an open one then takes requests
        for a loopback ``Host`` alone: ``gateway/api/browser_guard.py``)."""
        self._by_digest = {hashlib.sha256(_key_bytes(k.key)).digest(): k for k in keys}
        self._access = {k.key: Access.of(k.models, k.providers) for k in keys}
        self.open = not keys
        self.loopback = loopback
        self.default_tenant = default_tenant
        #: refused keys and tenants, a WARNING window per reason (``gateway.auth``): they were
        #: never logged, so a client trying keys went unseen (a logs review)
        self.refusals = WindowedLog(log, _refusals_counted, key_fields=lambda reason: {"reason": reason})

    def authenticate(self, request: web.Request) -> Principal:
        if self.open:
            refuse_browser_cross_site(request, loopback=self.loopback)
            return Principal(self.default_tenant, True, None)
        try:
            presented = _presented_key(request)
        except AuthenticationFailed as e:
            raise self._refused(request, "malformed Authorization header", e) from None
        if not presented:
            missing = AuthenticationFailed(
                "Missing API key: send 'Authorization: Bearer <key>'", code="missing_api_key"
            )
            raise self._refused(request, "missing key", missing)
        digest = hashlib.sha256(_key_bytes(presented)).digest()
        match = self._by_digest.get(digest)
        if match is None or not hmac.compare_digest(hashlib.sha256(_key_bytes(match.key)).digest(), digest):
            raise self._refused(
                request, "wrong key", AuthenticationFailed("Incorrect API key provided"), key_id(presented)
            )
        return Principal(match.tenant, match.admin, key_id(presented), self._access[match.key], match.metadata)

    def tenant_for(self, principal: Principal, requested: str | None) -> str:
        """The tenant a call bills: the key's, or the body's ``tenantId`` when allowed."""
        if requested is None or requested == principal.tenant:
            return principal.tenant
        if principal.admin:
            return requested
        refused = PermissionDenied(
            f"This API key belongs to tenant {principal.tenant!r} and may not act for tenant {requested!r}",
            param="tenantId",
        )
        self.refusals.hit(
            "another tenant",
            lambda since: (
                f"gateway key refused (another tenant): {principal.key_id} of tenant "
                f"{log_value(principal.tenant)} asked for tenant {log_value(requested)}{since}"
            ),
            {"reason": "another tenant", "keyId": principal.key_id, "tenantId": principal.tenant, "asked": requested},
        )
        raise refused

    def _refused(self, request: web.Request, reason: str, error: GatewayError, key: str | None = None) -> GatewayError:
        """``error``, logged in ``reason``'s window: the method, path and client address (and the
        digest of a wrong key, never the key)."""
        peer = request.remote or "?"
        shown = f" {key}" if key else ""
        self.refusals.hit(
            reason,
            lambda since: (
                f"gateway key refused ({reason}): {request.method} {log_value(request.path[:200])} "
                f"from {log_value(peer)}{shown}{since}"
            ),
            {"reason": reason, "method": request.method, "path": request.path[:200], "client": peer, "keyId": key},
        )
        return error


def _refusals_counted(reason: Hashable, count: int, seconds: float) -> str:
    return f"gateway key refused ({reason}): {count} more, in the {seconds:.0f} s after the last such line"
