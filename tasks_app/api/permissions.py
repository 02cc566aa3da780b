"""Object-level access shared by every app's API: owners see their own, staff all."""

from __future__ import annotations


class OwnedQuerysetMixin:
    """Limit a viewset's queryset to the user's own objects unless they are staff.

    Anyone else's object is then simply not found (404), so ids leak nothing.
    """

    owner_field = "owner"

    def get_queryset(self):
        queryset = super().get_queryset()
        user = self.request.user
        if user.is_staff:
            return queryset
        return queryset.filter(**{self.owner_field: user})
