from rest_framework.routers import DefaultRouter

from knowledge.api import views

router = DefaultRouter(trailing_slash=True)
router.register("knowledge-bases", views.KnowledgeBaseViewSet, basename="knowledgebase")
router.register("documents", views.DocumentViewSet, basename="document")

urlpatterns = router.urls
