"""HTTP API of the reward service: health, listing, scoring, auth, and every bad-input class -> 4xx."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from rewards_service.app import create_app, response_to_result
from rewards_service.codec import encode_batch, encode_png
from rewards_service.scorers.base import ScoreResult
from rewards_service.scorers.jpeg import JpegCompressibility, JpegIncompressibility, jpeg_size_kb
from rewards_service.settings import ServiceSettings

TOKEN = "s3cret"


def _images(n: int = 3, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _body(n: int = 3, size: int = 32) -> dict:
    return {"prompts": [f"p{i}" for i in range(n)], "images": encode_batch(_images(n, size))}


class HalfBroken:
    """Marks odd samples invalid, to check invalid samples travel as null + valid=false."""

    name, version = "half_broken", "7"

    def score(self, images, prompts) -> ScoreResult:
        n = len(prompts)
        return ScoreResult(
            rewards=[float("nan") if i % 2 else 1.0 for i in range(n)],
            version=self.version,
            details={"note": ["x"] * n},
            valid=[i % 2 == 0 for i in range(n)],
        )


@pytest.fixture(scope="module")
def settings() -> ServiceSettings:
    return ServiceSettings(
        max_images_per_request=4,
        max_pixels_per_image=64 * 64,
        max_image_side=128,
        max_body_bytes=200_000,
        auth_token=None,
    )


@pytest.fixture(scope="module")
def client(settings) -> TestClient:
    scorers = {s.name: s for s in (JpegCompressibility(), JpegIncompressibility(), HalfBroken())}
    return TestClient(create_app(scorers, settings), raise_server_exceptions=False)


def test_health_and_listing(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    listed = client.get("/v1/rewards").json()["rewards"]
    assert {r["name"]: r["version"] for r in listed} == {
        "jpeg_compressibility": "1",
        "jpeg_incompressibility": "1",
        "half_broken": "7",
    }


def test_score_jpeg_matches_pil_exactly(client):
    body = _body(3)
    response = client.post("/v1/score/jpeg_compressibility", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    expected = [-jpeg_size_kb(im) for im in _images(3)]
    assert data["rewards"] == expected and data["version"] == "1" and data["valid"] == [True] * 3
    assert client.post("/v1/score/jpeg_incompressibility", json=body).json()["rewards"] == [-r for r in expected]


def test_invalid_samples_are_null_and_flagged(client):
    data = client.post("/v1/score/half_broken", json=_body(3)).json()
    assert data["rewards"] == [1.0, None, 1.0] and data["valid"] == [True, False, True] and data["note"] == ["x"] * 3
    result = response_to_result(data)
    assert result.valid == [True, False, True] and np.isnan(result.rewards[1]) and result.details == {"note": ["x"] * 3}


def _png_of_mode(mode: str) -> str:
    buffer = io.BytesIO()
    Image.new(mode, (8, 8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_grayscale_and_rgba_png_are_accepted(client):
    body = {"prompts": ["a", "b"], "images": [_png_of_mode("L"), _png_of_mode("RGBA")]}
    assert client.post("/v1/score/jpeg_compressibility", json=body).status_code == 200


def _jpeg_b64() -> str:
    buffer = io.BytesIO()
    Image.fromarray(_images(1)[0]).save(buffer, format="JPEG")
    return base64.b64encode(buffer.getvalue()).decode()


BAD_BODIES = {
    "bad base64": ({"prompts": ["a"], "images": ["not base64 !!"]}, 422, "not valid base64"),
    "non-PNG": ({"prompts": ["a"], "images": [_jpeg_b64()]}, 422, "not a PNG"),
    "corrupt PNG": ({"prompts": ["a"], "images": [encode_png(_images(1)[0])[:60]]}, 422, "images[0]"),
    "count mismatch": ({"prompts": ["a", "b"], "images": encode_batch(_images(1))}, 422, "1 images but 2 prompts"),
    "no images": ({"prompts": [], "images": []}, 422, "at least 1 item"),
    "too many images": (_body(5, 8), 413, "above the limit of 4"),
    "too large image": (_body(1, 65), 413, "65x65 = 4225 pixels"),
    "too long side": (
        {"prompts": ["a"], "images": [encode_png(np.zeros((1, 200, 3), np.uint8))]},
        413,
        "a side above the limit of 128",
    ),
    "missing field": ({"images": []}, 422, "prompts: Field required"),
    "wrong type": ({"prompts": "a", "images": []}, 422, "prompts"),
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_bad_input_is_4xx_with_clear_detail(client, case):
    body, status, text = BAD_BODIES[case]
    response = client.post("/v1/score/jpeg_compressibility", json=body)
    assert response.status_code == status, response.text
    assert text in response.json()["detail"]


def test_malformed_json_is_422(client):
    response = client.post(
        "/v1/score/jpeg_compressibility", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422 and "invalid request body" in response.json()["detail"]


def test_unknown_reward_is_404(client):
    response = client.post("/v1/score/nope", json=_body(1))
    assert response.status_code == 404 and "unknown reward 'nope'" in response.json()["detail"]


def test_oversized_body_is_413(client):
    body = json.dumps({"prompts": ["a"], "images": ["A" * 300_000]}).encode()
    response = client.post("/v1/score/jpeg_compressibility", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "above the limit of 200000" in response.json()["detail"]


def test_oversized_chunked_body_is_413(client):
    chunks = (b"x" * 50_000 for _ in range(5))
    response = client.post(
        "/v1/score/jpeg_compressibility", content=chunks, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_wrong_content_type_is_415(client, content_type):
    headers = {"content-type": content_type} if content_type else {}
    response = client.post("/v1/score/jpeg_compressibility", content=json.dumps(_body(1)).encode(), headers=headers)
    assert response.status_code == 415 and "application/json" in response.json()["detail"]


@pytest.fixture(scope="module")
def auth_client(settings) -> TestClient:
    app = create_app(
        {"jpeg_compressibility": JpegCompressibility()},
        ServiceSettings(**{**settings.model_dump(), "auth_token": TOKEN}),
    )
    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}])
def test_auth_rejects_missing_or_wrong_token(auth_client, headers):
    for response in (
        auth_client.get("/v1/rewards", headers=headers),
        auth_client.post("/v1/score/jpeg_compressibility", json=_body(1), headers=headers),
    ):
        assert response.status_code == 401 and "bearer token" in response.json()["detail"]


def test_auth_accepts_right_token(auth_client):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert auth_client.get("/v1/rewards", headers=headers).status_code == 200
    assert auth_client.post("/v1/score/jpeg_compressibility", json=_body(1), headers=headers).status_code == 200
    assert auth_client.get("/healthz").status_code == 200


def test_token_from_environment(monkeypatch):
    monkeypatch.setenv("RLCM_REWARDS_TOKEN", "from-env")
    assert ServiceSettings().auth_token.get_secret_value() == "from-env"
    monkeypatch.delenv("RLCM_REWARDS_TOKEN")
    assert ServiceSettings().auth_token is None


def test_openapi_documents_the_api(client):
    schema = client.get("/openapi.json").json()
    score = schema["paths"]["/v1/score/{name}"]["post"]
    body_schema = score["requestBody"]["content"]["application/json"]["schema"]
    assert set(body_schema["required"]) == {"prompts", "images"}
    for field in ("prompts", "images"):
        prop = body_schema["properties"][field]
        assert prop["minItems"] == 1 and prop["maxItems"] == 4  # the configured max_images_per_request
        assert "same length" in prop["description"]
    assert "same length" in body_schema["description"]
    assert {"200", "401", "404", "408", "413", "415", "422", "500", "503"} <= set(score["responses"])
    assert {"/healthz", "/v1/rewards"} <= set(schema["paths"])


def test_openapi_schema_rejects_what_the_service_rejects(client):
    """The request schema says images are non-empty base64 PNGs; bodies it accepts or rejects get the same from the
    service."""
    import jsonschema

    schema = client.get("/openapi.json").json()["paths"]["/v1/score/{name}"]["post"]["requestBody"]["content"][
        "application/json"
    ]["schema"]
    item = schema["properties"]["images"]["items"]
    assert (
        item["minLength"] == 1
        and item["pattern"].startswith("^iVBORw0KGgo")
        and item["contentMediaType"] == "image/png"
    )
    assert "same length" in schema["description"] and "pixels in all" in schema["description"]
    good = {"prompts": ["a"], "images": [encode_png(_images(1)[0])]}
    jsonschema.validate(good, schema)
    assert client.post("/v1/score/jpeg_compressibility", json=good).status_code == 200
    for bad in (
        {"images": [""], "prompts": [""]},
        {"images": ["aGVsbG8="], "prompts": ["a"]},
        {"images": ["iVBORw0KGgo!!"], "prompts": ["a"]},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
        response = client.post("/v1/score/jpeg_compressibility", json=bad)
        assert response.status_code == 422 and "images[0]" in response.json()["detail"], response.text
