"""/v1/docs works offline: the page loads Swagger UI from the API itself, not a CDN."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from clearmark.workers.api import app


def test_docs_page_and_its_assets_come_from_the_api():
    client = TestClient(app)
    page = client.get("/v1/docs")
    assert page.status_code == 200
    assert "http://" not in page.text and "https://" not in page.text
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets), assets
    for asset in assets:
        response = client.get(asset)
        assert response.status_code == 200 and len(response.content) > 1000, asset
    assert "/v1/openapi.json" in page.text and client.get("/v1/openapi.json").status_code == 200
