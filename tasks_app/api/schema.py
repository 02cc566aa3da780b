"""OpenAPI post-processing: every operation documents DRF's error responses."""

from __future__ import annotations

ERROR = {
    "type": "object",
    "description": "DRF's error shape: `detail`, or field names mapped to messages.",
    "additionalProperties": True,
}
ERRORS = {
    "400": "Invalid input; the body names each bad field.",
    "401": "Authentication credentials were not provided or are invalid.",
    "403": "Authenticated, but not allowed (staff-only endpoint).",
    "404": "No such object, or it belongs to someone else.",
    "429": "Throttled; see the Retry-After header.",
    "503": "The database is unavailable (a restart or an outage); retry after the "
    "Retry-After header's seconds.",
}


def add_error_responses(result, generator, request, public):
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR
    for path_item in result.get("paths", {}).values():
        for operation in path_item.values():
            responses = operation.setdefault("responses", {})
            for code, description in ERRORS.items():
                responses.setdefault(
                    code,
                    {
                        "description": description,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/Error"}
                            }
                        },
                    },
                )
    return result
