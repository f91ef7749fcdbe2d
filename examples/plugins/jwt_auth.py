"""authenticate: accept `Authorization: Bearer <JWT>` in place of a gateway key.

The token must be HS256, signed with `secret`, not expired (`exp`, required) and not early
(`nbf`); with `audience` set, its `aud` must name it. Its `claim` (default `tollway_key`)
names the gateway key it acts as: that key's models, limits, budget and ledger apply. A JWT
cannot grant more than a configured key.

    plugins:
      - name: jwt
        module: "examples.plugins.jwt_auth:factory"
        config: {secret: "${JWT_SECRET}", claim: tollway_key, audience: tollway}
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

from tollway.gateway.plugins.api import AuthContext, KeyRecord


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


class JwtAuthorizer:
    def __init__(self, config: dict[str, Any]) -> None:
        secret = config.get("secret")
        if not isinstance(secret, str) or len(secret) < 16:
            raise ValueError("config.secret: a shared secret of at least 16 characters is required")
        self.secret = secret.encode()
        self.claim = str(config.get("claim", "tollway_key"))
        self.audience = config.get("audience")
        self.leeway = float(config.get("leeway_seconds", 30))

    async def authenticate(self, ctx: AuthContext) -> KeyRecord | None:
        scheme, _, token = ctx.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        claims = self.verify(token.strip())
        name = claims.get(self.claim) if claims is not None else None
        return ctx.key_named(name) if isinstance(name, str) else None

    def verify(self, token: str) -> dict[str, Any] | None:
        """The token's claims if it is a valid, current HS256 JWT signed with the secret; else None."""
        parts = token.split(".")
        if len(parts) != 3:
            return None
        try:
            header = json.loads(_b64(parts[0]))
            claims = json.loads(_b64(parts[1]))
            signature = _b64(parts[2])
        except ValueError:
            return None
        if not isinstance(header, dict) or header.get("alg") != "HS256" or not isinstance(claims, dict):
            return None
        expected = hmac.new(self.secret, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(expected, signature):
            return None
        now = time.time()
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if not isinstance(exp, (int, float)) or now > exp + self.leeway:
            return None
        if isinstance(nbf, (int, float)) and now < nbf - self.leeway:
            return None
        if self.audience is not None:
            aud = claims.get("aud")
            if aud != self.audience and not (isinstance(aud, list) and self.audience in aud):
                return None
        return claims


def sign(claims: dict[str, Any], secret: str) -> str:
    """An HS256 JWT of `claims` (for tests and tools)."""
    def enc(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    head = enc(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = enc(json.dumps(claims).encode())
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{enc(sig)}"


def factory(config: dict[str, Any]) -> JwtAuthorizer:
    return JwtAuthorizer(config)
