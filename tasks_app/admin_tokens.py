"""API tokens in the admin: issue one (its key shown once), revoke, see last use.

Only the hash is stored, so the admin can neither show nor search a key; the
prefix tells tokens apart. Model permissions (add/change/view apitoken) govern
who may do what, as for every admin page.
"""

from __future__ import annotations

from django.contrib import admin, messages
from rest_framework.authtoken.models import TokenProxy

from tasks_app import tokens
from tasks_app.models import ApiToken

# DRF's plain-text token admin: its table is emptied by migration 0006 and nothing
# authenticates against it any more.
if admin.site.is_registered(TokenProxy):
    admin.site.unregister(TokenProxy)


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = (
        "prefix_",
        "user",
        "name",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked_at",
    )
    list_select_related = ("user",)
    list_filter = ("created_at", "expires_at", "revoked_at")
    search_fields = ("user__username", "name", "prefix")
    raw_id_fields = ("user",)
    readonly_fields = ("prefix_", "created_at", "last_used_at", "revoked_at")
    actions = ("revoke",)

    def get_fields(self, request, obj=None):
        if obj is None:
            return ("user", "name", "expires_at")
        return ("prefix_", "user", "name", "created_at", "expires_at", "last_used_at")

    def get_readonly_fields(self, request, obj=None):
        # a token is not moved to another user
        return (*self.readonly_fields, "user") if obj else self.readonly_fields

    def get_changeform_initial_data(self, request):
        return {"expires_at": tokens.expiry()}

    @admin.display(description="Key", ordering="prefix")
    def prefix_(self, obj: ApiToken) -> str:
        return f"{obj.prefix}…"

    def save_model(self, request, obj, form, change):
        if change:
            obj.save(update_fields=["name", "expires_at"])
            return
        key = tokens.new_key(obj)
        obj.save()
        messages.warning(
            request,
            f"The key of the new token, shown only now (only its hash is kept): {key}",
        )

    @admin.action(description="Revoke selected tokens", permissions=["change"])
    def revoke(self, request, queryset):
        count = tokens.revoke(queryset)
        self.message_user(request, f"{count} token(s) revoked.", messages.SUCCESS)
