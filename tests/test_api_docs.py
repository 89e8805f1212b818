"""The API's documentation: /v1/docs works offline (Swagger UI comes from the API itself, not a
CDN), and the OpenAPI document types what the API answers."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from clearmark.workers.api import app
from clearmark.workers.db import JPEG_METRIC_FIELDS, METHOD_FIELD, METRIC_FIELDS


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


def test_the_openapi_document_types_every_answer_and_the_upload_rule():
    """Generated clients get the job document's fields, and the upload's one rule the
    parameters cannot say: exactly one of `file` (a file part) and `source_uri`."""
    spec = app.openapi()
    schemas, paths = spec["components"]["schemas"], spec["paths"]

    def answer(path, method, status):
        return paths[path][method]["responses"][status]["content"]["application/json"]["schema"]

    job = {"$ref": "#/components/schemas/JobDocument"}
    assert answer("/v1/images", "post", "202") == job == answer("/v1/images", "post", "200")
    assert answer("/v1/jobs/{job_id}", "get", "200") == job
    assert answer("/v1/jobs/{job_id}/retry", "post", "202") == job
    assert answer("/v1/jobs", "get", "200") == {"$ref": "#/components/schemas/JobPage"}
    document = schemas["JobDocument"]
    assert "additionalProperties" not in document
    assert set(document["required"]) == set(document["properties"]) >= {"id", "status", "metrics", "links"}
    assert document["properties"]["status"] == {"$ref": "#/components/schemas/JobStatus"}
    assert document["properties"]["created_at"]["format"] == "date-time"
    metrics = {*METRIC_FIELDS, *JPEG_METRIC_FIELDS, METHOD_FIELD}
    assert set(schemas["JobMetricsDocument"]["properties"]) == metrics
    assert document["properties"]["group"]["anyOf"] == [{"type": "string"}, {"type": "null"}]

    body = paths["/v1/images"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert body["schema"]["oneOf"] == [{"required": ["file"]}, {"required": ["source_uri"]}]
    assert "image/jpeg" in body["encoding"]["file"]["contentType"]
    # 400 is an upload body that is not multipart at all; every bad parameter is a 422.
    declaring_400 = [(p, m) for p, ops in paths.items() for m, op in ops.items() if "400" in op["responses"]]
    assert declaring_400 == [("/v1/images", "post")]
    since = next(p for p in paths["/v1/jobs"]["get"]["parameters"] if p["name"] == "since")
    assert "ISO 8601" in since["description"]
