"""Knowledge bases and documents in the admin: status, chunk counts, their tasks,
re-vectorize / delete-vectors actions and a search page per knowledge base."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Max, Sum
from django.db.models.functions import Coalesce
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from knowledge import embeddings, search, services
from knowledge.models import Document, KnowledgeBase
from tasks_app.admin_widgets import TaskRecordInline, state_badge

# Document states drawn with the task badge of the matching ledger state.
BADGE_STATE = {
    Document.Status.PENDING: "PENDING",
    Document.Status.VECTORIZING: "STARTED",
    Document.Status.READY: "SUCCESS",
    Document.Status.FAILED: "FAILURE",
}
SEARCH_K = 10


class KnowledgeBaseForm(forms.ModelForm):
    class Meta:
        model = KnowledgeBase
        fields = [
            "owner",
            "name",
            "description",
            "embedding_provider",
            "embedding_model",
            "embedding_dimension",
            "hybrid",
        ]

    def clean(self):
        data = super().clean()
        if self.instance.pk is None and "embedding_provider" in data:
            try:
                embeddings.get_provider(
                    data["embedding_provider"],
                    model=data.get("embedding_model", ""),
                    dimension=data.get("embedding_dimension") or 0,
                )
            except embeddings.EmbeddingRejected as exc:
                raise forms.ValidationError(str(exc)) from None
        return data


class SearchForm(forms.Form):
    q = forms.CharField(label="Query", max_length=2000)
    k = forms.IntegerField(
        label="Results", min_value=1, max_value=search.MAX_K, initial=SEARCH_K
    )


@admin.register(KnowledgeBase)
class KnowledgeBaseAdmin(admin.ModelAdmin):
    form = KnowledgeBaseForm
    list_display = (
        "id",
        "name",
        "owner",
        "embedding",
        "documents_",
        "chunks_",
        "last_vectorized",
        "version",
        "created_at",
    )
    list_filter = ("embedding_provider",)
    search_fields = ("name", "owner__username")
    raw_id_fields = ("owner",)
    list_select_related = ("owner",)
    actions = ("update_selected", "rebuild_selected", "delete_vectors_selected")

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                document_total=Count("documents"),
                chunk_total=Coalesce(Sum("documents__chunk_count"), 0),
                last_vectorized_at=Max("documents__last_vectorized_at"),
            )
        )

    def get_readonly_fields(self, request, obj=None):
        # Vectors of another model cannot be compared: these are fixed at creation.
        fixed = ("embedding_provider", "embedding_model", "embedding_dimension")
        return ("version", "created_at", "updated_at", *(fixed if obj else ()))

    def save_model(self, request, obj, form, change):
        if change:
            services.edit_knowledge_base(
                obj,
                name=obj.name,
                description=obj.description,
                owner=obj.owner,
                hybrid=obj.hybrid,
            )
            return
        created = services.create_knowledge_base(
            obj.owner,
            name=obj.name,
            description=obj.description,
            embedding_provider=obj.embedding_provider,
            embedding_model=obj.embedding_model,
            embedding_dimension=obj.embedding_dimension,
            hybrid=obj.hybrid,
        )
        obj.pk = created.pk
        obj.refresh_from_db()

    def delete_model(self, request, obj):
        services.delete_knowledge_base(obj)

    @admin.display(description="Embedding")
    def embedding(self, obj: KnowledgeBase) -> str:
        return f"{obj.embedding_provider}:{obj.embedding_model} ({obj.embedding_dimension})"

    @admin.display(description="Documents", ordering="document_total")
    def documents_(self, obj: KnowledgeBase) -> str:
        url = reverse("admin:knowledge_document_changelist")
        return format_html(
            '<a href="{}?knowledge_base__id__exact={}">{}</a>',
            url,
            obj.pk,
            obj.document_total,
        )

    @admin.display(description="Chunks", ordering="chunk_total")
    def chunks_(self, obj: KnowledgeBase) -> int:
        return obj.chunk_total

    @admin.display(description="Last vectorized", ordering="last_vectorized_at")
    def last_vectorized(self, obj: KnowledgeBase):
        return obj.last_vectorized_at

    @admin.action(description="Update selected knowledge bases (incremental)")
    def update_selected(self, request, queryset) -> None:
        self._submit_updates(request, queryset, services.INCREMENTAL)

    @admin.action(description="Rebuild selected knowledge bases (re-vectorize all)")
    def rebuild_selected(self, request, queryset) -> None:
        self._submit_updates(request, queryset, services.REBUILD)

    def _submit_updates(self, request, queryset, mode: str) -> None:
        queued = 0
        for kb in queryset:
            services.submit_update(kb, mode, owner=request.user)
            queued += 1
        self.message_user(
            request, f"Queued a {mode} update of {queued} knowledge base(s)."
        )

    @admin.action(description="Delete vectors of selected knowledge bases")
    def delete_vectors_selected(self, request, queryset) -> None:
        queued = skipped = 0
        for kb in queryset:
            if not kb.chunk_total:
                skipped += 1
                continue
            services.submit_delete_vectors(kb=kb, owner=request.user)
            queued += 1
        self.message_user(
            request,
            f"Queued deleting the vectors of {queued} knowledge base(s); "
            f"skipped {skipped} without vectors.",
        )

    # --- the search page ------------------------------------------------------

    def get_urls(self):
        search_url = path(
            "<int:pk>/search/",
            self.admin_site.admin_view(self.search_view),
            name="knowledge_knowledgebase_search",
        )
        return [search_url, *super().get_urls()]

    def search_view(self, request, pk: int):
        kb = get_object_or_404(KnowledgeBase, pk=pk)
        if not self.has_view_permission(request, kb):
            raise PermissionDenied
        form = SearchForm(request.GET or None, initial={"k": SEARCH_K})
        hits, error = [], ""
        if form.is_valid():
            try:
                hits = search.search(
                    kb, form.cleaned_data["q"], k=form.cleaned_data["k"]
                )
            except embeddings.EmbeddingError as exc:
                error = str(exc)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Search {kb.name}",
            "opts": self.model._meta,
            "original": kb,
            "form": form,
            "hits": hits,
            "searched": form.is_bound and form.is_valid(),
            "error": error,
        }
        return TemplateResponse(request, "admin/knowledge/search.html", context)


@admin.register(Document)
class DocumentAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "title",
        "knowledge_base",
        "status_",
        "chunk_count",
        "last_vectorized_at",
        "updated_at",
    )
    list_filter = ("status", "knowledge_base__embedding_provider")
    search_fields = ("=id", "title", "source")
    raw_id_fields = ("knowledge_base",)
    list_select_related = ("knowledge_base",)
    readonly_fields = (
        "status_",
        "error",
        "chunk_count",
        "last_vectorized_at",
        "content_hash",
        "vectorized_hash",
        "created_at",
        "updated_at",
    )
    fields = ("knowledge_base", "title", "source", "content", *readonly_fields)
    inlines = (TaskRecordInline,)
    actions = ("vectorize_selected", "delete_vectors_selected")

    def get_readonly_fields(self, request, obj=None):
        return (
            ("knowledge_base", *self.readonly_fields) if obj else self.readonly_fields
        )

    def save_model(self, request, obj, form, change):
        if change:
            services.update_document(
                Document.objects.get(pk=obj.pk),
                title=obj.title,
                content=obj.content,
                source=obj.source,
                owner=request.user,
            )
            return
        created = services.add_document(
            obj.knowledge_base,
            title=obj.title,
            content=obj.content,
            source=obj.source,
            owner=request.user,
        )
        obj.pk = created.pk
        obj.refresh_from_db()

    def delete_model(self, request, obj):
        services.delete_document(obj)

    @admin.display(description="Status", ordering="status")
    def status_(self, obj: Document) -> str:
        badge = state_badge(BADGE_STATE[obj.status], obj.get_status_display())
        if obj.status == Document.Status.FAILED and obj.error:
            return format_html(
                '{} <span title="{}">{}</span>', badge, obj.error, obj.error[:80]
            )
        return badge

    @admin.action(description="Re-vectorize selected documents")
    def vectorize_selected(self, request, queryset) -> None:
        queued = 0
        for document in queryset:
            services.submit_vectorize(document, owner=request.user)
            queued += 1
        self.message_user(request, f"Queued vectorizing {queued} document(s).")

    @admin.action(description="Delete vectors of selected documents")
    def delete_vectors_selected(self, request, queryset) -> None:
        queued = skipped = 0
        for document in queryset:
            if not document.chunk_count:
                skipped += 1
                continue
            services.submit_delete_vectors(document=document, owner=request.user)
            queued += 1
        self.message_user(
            request,
            f"Queued deleting the vectors of {queued} document(s); "
            f"skipped {skipped} without vectors.",
            messages.SUCCESS if queued else messages.WARNING,
        )
