"""Login lockout for web logins (django-axes), out of the way of everything else."""

from __future__ import annotations

from axes.backends import AxesStandaloneBackend


class WebLoginLockoutBackend(AxesStandaloneBackend):
    """django-axes' check, for logins that come with a request (the admin's and
    any login page). axes refuses an authenticate() without one; the callers that
    have none (the test client's login(), a script's authenticate()) are not
    password guessing over the network, so they pass through to ModelBackend."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        if request is None:
            return None
        return super().authenticate(
            request, username=username, password=password, **kwargs
        )
