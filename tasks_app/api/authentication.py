"""`Authorization: Token <key>` checked against hashed, expiring tokens."""

from __future__ import annotations

from rest_framework.authentication import TokenAuthentication
from rest_framework.exceptions import AuthenticationFailed

from tasks_app import tokens


class HashedTokenAuthentication(TokenAuthentication):
    """DRF's header format and 401s, with tasks_app.tokens for the lookup."""

    def authenticate_credentials(self, key):
        try:
            token = tokens.authenticate(key)
        except tokens.TokenRefused as exc:
            raise AuthenticationFailed(str(exc)) from None
        if not token.user.is_active:
            raise AuthenticationFailed("User inactive or deleted.")
        return token.user, token
