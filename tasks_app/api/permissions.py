"""Object-level access shared by every app's API: owners see their own, staff all."""

from __future__ import annotations

from rest_framework.permissions import BasePermission


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


class CanControlWorkers(BasePermission):
    """Staff holding tasks_app.control_workers, as the admin's worker controls
    need: is_staff alone lets a user look, not restart or shut down workers."""

    def has_permission(self, request, view) -> bool:
        user = request.user
        return bool(
            user and user.is_staff and user.has_perm("tasks_app.control_workers")
        )
