"""What the gateway answers when FastAPI or Starlette refuse a request before any route runs,
and what /openapi.json says of errors: every error is problem+json, documented as such."""

import json

import pytest
from fastapi.testclient import TestClient

from tryfleet.gateway.app import create_app
from tryfleet.gateway.keys import KeyStore, Scope
from tryfleet.gateway.policy import Policies
from tryfleet.gateway.problems import MEDIA_TYPE


@pytest.fixture
def api(tmp_path):
    keys = KeyStore(tmp_path / "ledger.db", tmp_path)
    app = create_app(None, keys, Policies(tmp_path), tmp_path / "ledger.db")
    _, token = keys.create("default", frozenset({Scope.ADMIN}), created_by="test")
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as client:
        yield client
    app.state.sandboxes.close()
    keys.close()


@pytest.mark.parametrize(("path", "allowed"), [
    ("/v1/sandboxes/sbx-1", "DELETE, GET"),
    ("/v1/sandboxes", "GET, POST"),
    ("/v1/keys/k1", "DELETE, GET"),
])
def test_a_405_allows_every_method_of_the_resource_not_only_one_routes(api, path, allowed):
    r = api.request("OPTIONS", path)
    assert r.status_code == 405
    assert r.headers["allow"] == allowed
    assert r.headers["content-type"] == MEDIA_TYPE


def test_a_body_that_is_not_text_is_a_400_bad_request_problem(api):
    r = api.post("/v1/sandboxes/sbx-1/timeout", content=b"\xff\xfe{",
                 headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.headers["content-type"] == MEDIA_TYPE
    assert r.json()["type"] == "urn:tryfleet:problem:bad-request"
    assert "UTF-8 JSON" in r.json()["detail"]


def _errors(doc):
    for path, item in doc["paths"].items():
        for method, op in item.items():
            for status, answer in op["responses"].items():
                if status[0] in "45":
                    yield f"{method.upper()} {path} {status}", answer


def test_every_documented_error_is_problem_json_422_included(api):
    doc = api.get("/openapi.json").json()
    errors = dict(_errors(doc))
    assert "POST /v1/keys 422" in errors and "GET /v1/me 401" in errors
    for where, answer in errors.items():
        assert list(answer["content"]) == [MEDIA_TYPE], where
        assert set(answer["content"][MEDIA_TYPE]["schema"]["required"]) >= {
            "type", "title", "status", "detail"}, where
    assert "HTTPValidationError" not in json.dumps(doc)


def test_every_operation_with_a_json_body_documents_the_400_of_an_unreadable_one(api):
    doc = api.get("/openapi.json").json()
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if "requestBody" in op:
                assert "400" in op["responses"], f"{method.upper()} {path}"
