"""The pages a new user opens: / (the admin's "View site") and Swagger UI, whose
files are served from the installed package, never a CDN."""

from __future__ import annotations

import re

import pytest
from django.contrib.staticfiles import finders

pytestmark = pytest.mark.django_db


def test_view_site_leads_to_a_page_linking_everything(admin_client):
    admin = admin_client.get("/admin/").content.decode()
    view_site = re.search(r'<a href="([^"]+)">View site</a>', admin).group(1)
    page = admin_client.get(view_site)
    assert page.status_code == 200
    html = page.content.decode()
    for link in ('href="/admin/"', 'href="/api/docs/"', 'href="/health"'):
        assert link in html


def test_swagger_ui_loads_its_files_from_this_server(admin_client):
    html = admin_client.get("/api/docs/").content.decode()
    assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css|png))"', html)
    assert any("swagger-ui-bundle.js" in a for a in assets), html[:2000]
    assert not re.search(r"https?://", " ".join(assets)), assets
    assert "cdn" not in html.lower()
    for asset in assets:
        assert asset.startswith("/static/"), asset
        assert finders.find(asset.removeprefix("/static/")), asset
