from rest_framework.exceptions import NotFound
from rest_framework.pagination import PageNumberPagination


class StrictPageNumberPagination(PageNumberPagination):
    """An empty or non-numeric ?page= is "Invalid page." (404), as an out-of-range one
    already is, instead of silently meaning page 1."""

    def paginate_queryset(self, queryset, request, view=None):
        page = request.query_params.get(self.page_query_param)
        if page is not None and not page.isdigit():
            raise NotFound("Invalid page.")
        return super().paginate_queryset(queryset, request, view)
