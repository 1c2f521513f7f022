"""Content-Encoding of request bodies: gzip and deflate are decoded (bounded by
max_body_bytes once decoded), other codings refused with 415 in the route's error shape."""

from __future__ import annotations

import gzip
import json
import zlib

import pytest

from service import create_app
from service.api import content_encoding
from tests.support import IRIS, IRIS_ROW

BODY = json.dumps({"instances": [IRIS_ROW]}).encode()
LIMIT = 4096


@pytest.fixture
def client(store_dir, tmp_path):
    app = create_app(
        {"store": store_dir, "state_dir": tmp_path / "monitoring", "max_body_bytes": LIMIT}
    )
    yield app.test_client()
    app.extensions["model_service"].registry.stop()


def post(client, path, data, encoding, content_type="application/json"):
    return client.post(
        path, data=data, headers={"Content-Type": content_type, "Content-Encoding": encoding}
    )


@pytest.mark.parametrize(
    ("encoding", "data"),
    [
        ("gzip", gzip.compress(BODY, mtime=0)),
        ("x-gzip", gzip.compress(BODY, mtime=0)),
        ("deflate", zlib.compress(BODY)),
        ("GZIP", gzip.compress(BODY, mtime=0)),
        ("identity", BODY),
        ("gzip, deflate", zlib.compress(gzip.compress(BODY, mtime=0))),
        # Two gzip members one after the other are one body (RFC 1952).
        ("gzip", gzip.compress(BODY[:10], mtime=0) + gzip.compress(BODY[10:], mtime=0)),
    ],
)
def test_encoded_bodies_predict_like_plain_ones(client, encoding, data):
    plain = client.post(f"/v1/models/{IRIS}/predict", data=BODY, content_type="application/json")
    response = post(client, f"/v1/models/{IRIS}/predict", data, encoding)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["predictions"] == plain.get_json()["predictions"]


@pytest.mark.parametrize(
    ("path", "encoding", "data", "status", "code"),
    [
        (f"/v1/models/{IRIS}/predict", "br", BODY, 415, "unsupported_content_encoding"),
        (f"/v1/models/{IRIS}/predict", "gzip, zstd", BODY, 415, "unsupported_content_encoding"),
        (f"/v1/models/{IRIS}/predict", "gzip", BODY, 400, "invalid_content_encoding"),
        (
            f"/v1/models/{IRIS}/predict",
            "gzip",
            gzip.compress(BODY, mtime=0)[:-9],
            400,
            "invalid_content_encoding",
        ),
        (
            f"/v1/models/{IRIS}/predict",
            "deflate",
            zlib.compress(BODY) + b"x",
            400,
            "invalid_content_encoding",
        ),
        # A bomb: 4 kB of gzip that would inflate to 4 MB stops one byte past the limit.
        (
            f"/v1/models/{IRIS}/predict",
            "gzip",
            gzip.compress(b" " * 4_000_000, mtime=0),
            413,
            "body_too_large",
        ),
        # A route that reads no body refuses an unknown coding too: never ignored.
        ("/v1/admin/reload", "br", b"{}", 415, "unsupported_content_encoding"),
    ],
)
def test_bodies_that_do_not_decode_are_refused(client, path, encoding, data, status, code):
    response = post(client, path, data, encoding)
    assert response.status_code == status
    assert response.get_json()["error"]["code"] == code


def test_each_protocol_refuses_in_its_own_error_shape(client):
    v2 = post(client, f"/v2/models/{IRIS}/infer", BODY, "br")
    assert v2.status_code == 415
    assert "br" in v2.get_json()["error"]
    mlflow = post(client, "/invocations", BODY, "br")
    assert mlflow.status_code == 415
    assert "br" in mlflow.get_json()["message"]


def test_a_request_without_a_body_is_not_refused_for_its_encoding(client):
    assert client.get("/healthz", headers={"Content-Encoding": "br"}).status_code == 200


def test_decode_stops_one_byte_past_the_limit():
    assert content_encoding.decode(gzip.compress(b"x" * 100), "gzip", 100) == b"x" * 100
    with pytest.raises(content_encoding.RequestEntityTooLarge):
        content_encoding.decode(gzip.compress(b"x" * 101), "gzip", 100)
    assert content_encoding.codings("identity, GZip ,deflate") == ["gzip", "deflate"]


def test_a_plain_body_is_read_straight_with_the_same_limits_and_errors(client):
    """Plain bodies skip Werkzeug's wrapped stream (content_encoding.DecodingRequest):
    the answer, the 413 past the limit and the 400 for a body shorter than its
    Content-Length are those of the wrapped stream."""
    path = f"/v1/models/{IRIS}/predict"
    plain = client.post(path, data=BODY, content_type="application/json")
    assert plain.status_code == 200 and len(plain.get_json()["predictions"]) == 1
    large = b'{"instances": [' + b" " * LIMIT + b"]}"
    too_large = client.post(path, data=large, content_type="application/json")
    assert too_large.status_code == 413
    assert too_large.get_json()["error"]["code"] == "body_too_large"
    short = client.post(
        path,
        data=BODY,
        content_type="application/json",
        environ_overrides={"CONTENT_LENGTH": str(len(BODY) + 10)},
    )
    assert short.status_code == 400
    assert "error" in short.get_json()
    # A Content-Length that is not a plain number is left to Werkzeug as before.
    odd = client.post(
        path, data=BODY, content_type="application/json", environ_overrides={"CONTENT_LENGTH": "²"}
    )
    assert 200 <= odd.status_code < 500
