"""API tokens: issued once, stored as a hash, expiring, revocable, last use recorded.

The key is shown once, when issued; the database holds its SHA-256 only, so a
leaked database or backup holds no usable credential. Keys are 40 hex characters
(160 random bits), the same shape as the DRF tokens the 0006 migration hashed,
so clients send `Authorization: Token <key>` as they always did.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from tasks_app.models import ApiToken

# Writing last_used_at on every request would make each API call a write; once a
# minute per token says when it was last used just as well.
TOUCH_EVERY = timedelta(seconds=60)


class TokenRefused(Exception):
    """The key matches no active token: unknown, expired or revoked."""


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def issue(user, *, name: str = "", days: int | None = None) -> tuple[ApiToken, str]:
    """A new token for user and its key (shown to no one after this).

    days: lifetime; None takes API_TOKEN_DAYS; 0 never expires.
    """
    token = ApiToken(user=user, name=name, expires_at=expiry(days))
    key = new_key(token)
    token.save()
    return token, key


def expiry(days: int | None = None):
    """When a token issued now expires (None: never)."""
    days = settings.API_TOKEN_DAYS if days is None else days
    return timezone.now() + timedelta(days=days) if days else None


def new_key(token: ApiToken) -> str:
    """Give an unsaved token a fresh key; return the key (it is not kept)."""
    key = secrets.token_hex(20)
    token.digest, token.prefix = digest(key), key[:8]
    return key


def authenticate(key: str) -> ApiToken:
    """The active token whose key this is; TokenRefused naming why not."""
    token = ApiToken.objects.select_related("user").filter(digest=digest(key)).first()
    if token is None:
        raise TokenRefused("Invalid token.")
    if token.revoked_at is not None:
        raise TokenRefused("Token revoked.")
    if not token.is_active:
        raise TokenRefused("Token expired.")
    _touch(token)
    return token


def _touch(token: ApiToken) -> None:
    now = timezone.now()
    stale = Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - TOUCH_EVERY)
    ApiToken.objects.filter(stale, pk=token.pk).update(last_used_at=now)


def revoke(tokens) -> int:
    """Revoke a queryset of tokens; how many were active."""
    return tokens.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
