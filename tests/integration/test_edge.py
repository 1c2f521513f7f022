"""The edge, live: Nginx rendered from deploy/nginx.conf in front of the real Gunicorn, with
HTTPS on, a tiny rate and connection limit, and one listed admin network. Every answer Nginx
makes itself is the service's JSON error with its headers (malformed requests go over raw
sockets), on the plain listener (which only redirects) and on the HTTPS one; the limits
answer 429 with Retry-After; the admin API is closed to unlisted addresses; X-Request-ID is
kept only when sane. Upstream failures (502, 503, 504) and a stalled client use a bare Nginx
in front of a scripted upstream, with the timeouts shortened.

Clients of several addresses are 127.0.0.x source addresses on loopback: each has its own
rate and connection bucket, and only 127.0.0.1 counts as loopback for the admin API."""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import re
import signal
import socket
import socketserver
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import NamedTuple

import pytest

from service.config import Settings
from service.localstack import (
    NGINX_TEMPLATE,
    LocalStack,
    free_port,
    nginx_binary,
    render_nginx_config,
)
from tests.support import eventually, require_nginx, running_stack

pytestmark = pytest.mark.integration

MAX_BODY_BYTES = 4096
RATE, BURST = 2, 4
CONN_LIMIT = 2
LISTED_ADMIN_ADDRESS = "127.0.0.3"
HSTS = "max-age=31536000"
ALLOW = "GET, HEAD, POST, OPTIONS"
GENERATED_ID = re.compile(r"[0-9a-f]{32}")
TIMEOUT_S = 10.0


class Answer(NamedTuple):
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def error(self) -> dict:
        assert self.headers["Content-Type"] == "application/json", self.headers
        error = json.loads(self.body)["error"]
        assert error["request_id"] == self.headers["X-Request-ID"]
        assert error["message"]
        return error


@pytest.fixture(scope="module")
def edge(certificate, tmp_path_factory) -> Iterator[LocalStack]:
    """One Gunicorn worker (an empty store is enough) behind Nginx with HTTPS."""
    cert, key = certificate
    extra_env = {
        "MODEL_SERVICE_RATE_LIMIT": f"{RATE}r/s",
        "MODEL_SERVICE_RATE_LIMIT_BURST": str(BURST),
        "MODEL_SERVICE_CONN_LIMIT_PER_CLIENT": str(CONN_LIMIT),
        "MODEL_SERVICE_ADMIN_NETWORKS": f"{LISTED_ADMIN_ADDRESS}/32",
        "MODEL_SERVICE_TLS_CERTIFICATE": str(cert),
        "MODEL_SERVICE_TLS_CERTIFICATE_KEY": str(key),
        "MODEL_SERVICE_TLS_PORT": str(free_port()),
        "MODEL_SERVICE_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
    }
    with running_stack(tmp_path_factory.mktemp("edge"), env=extra_env, workers=1) as started:
        yield started


@pytest.fixture(scope="module")
def tls(certificate) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certificate[0]))


def tls_port(stack: LocalStack) -> int:
    return stack.edge_settings().tls_port


def exchange(
    port: int,
    raw: bytes,
    *,
    tls: ssl.SSLContext | None = None,
    source: str = "127.0.0.1",
) -> Answer:
    """Send raw bytes, read one HTTP answer."""
    sock = socket.create_connection(("127.0.0.1", port), TIMEOUT_S, (source, 0))
    if tls is not None:
        sock = tls.wrap_socket(sock, server_hostname="127.0.0.1")
    with sock:
        sock.sendall(raw)
        response = http.client.HTTPResponse(sock, method="GET")
        response.begin()
        return Answer(response.status, response.headers, response.read())


def request(
    port: int,
    method: str,
    path: str,
    *,
    tls: ssl.SSLContext | None,
    headers: dict[str, str] | None = None,
    source: str = "127.0.0.1",
) -> Answer:
    if tls is None:
        connection = http.client.HTTPConnection(
            "127.0.0.1", port, timeout=TIMEOUT_S, source_address=(source, 0)
        )
    else:
        connection = http.client.HTTPSConnection(
            "127.0.0.1", port, timeout=TIMEOUT_S, source_address=(source, 0), context=tls
        )
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return Answer(response.status, response.headers, response.read())
    finally:
        connection.close()


def own_bucket(**headers: str) -> dict[str, str]:
    """Headers with a key nobody else sends: a bucket of its own, so the tiny rate limit
    stays out of the way of tests about something else (the app ignores keys on the routes
    these use)."""
    return {"Authorization": f"Bearer edge-{next(_KEYS)}", **headers}


_KEYS = itertools.count()


# -- what Nginx answers itself ---------------------------------------------------------------

HOST = b"Host: 127.0.0.1\r\n"
MALFORMED = [
    (
        "nul-in-path",
        b"GET /v1/models/a%00b/predict HTTP/1.1\r\n" + HOST + b"\r\n",
        400,
        "bad_request",
    ),
    ("not-http", b"GARBAGE\r\n\r\n", 400, "bad_request"),
    ("no-host", b"GET /healthz HTTP/1.1\r\n\r\n", 400, "bad_request"),
    ("bad-header", b"GET /healthz HTTP/1.1\r\n" + HOST + b"no colon\r\n\r\n", 400, "bad_request"),
    (
        "10kB-path",
        b"GET /" + b"a" * 10240 + b" HTTP/1.1\r\n" + HOST + b"\r\n",
        414,
        "request_uri_too_large",
    ),
    (
        "10kB-header",
        b"GET /healthz HTTP/1.1\r\n" + HOST + b"X-Big: " + b"a" * 10240 + b"\r\n\r\n",
        431,
        "request_header_fields_too_large",
    ),
    ("trace", b"TRACE /healthz HTTP/1.1\r\n" + HOST + b"\r\n", 405, "method_not_allowed"),
    ("connect", b"CONNECT / HTTP/1.1\r\n" + HOST + b"\r\n", 405, "method_not_allowed"),
    ("http-9", b"GET /healthz HTTP/9.9\r\n" + HOST + b"\r\n", 505, "http_version_not_supported"),
    (
        "unknown-transfer-encoding",
        b"POST /v1/models/a/predict HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: gzip\r\n\r\n",
        501,
        "not_implemented",
    ),
    ("internal-location", b"GET /_edge/400 HTTP/1.1\r\n" + HOST + b"\r\n", 404, "not_found"),
]


@pytest.mark.parametrize("listener", ["https", "plain"])
@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [pytest.param(raw, status, code, id=name) for name, raw, status, code in MALFORMED],
)
def test_nginx_answers_malformed_requests_in_json(edge, tls, listener, raw, status, code):
    """On the HTTPS listener and on the plain one (which otherwise only redirects)."""
    if listener == "https":
        answer = exchange(tls_port(edge), raw, tls=tls)
    else:
        answer = exchange(edge.port, raw)
    assert answer.status == status, answer
    error = answer.error()
    assert error["code"] == code
    assert GENERATED_ID.fullmatch(error["request_id"])
    assert (answer.headers["Strict-Transport-Security"] == HSTS) == (listener == "https")
    if status == 405:
        assert answer.headers["Allow"] == ALLOW


def test_a_body_over_the_limit_is_a_json_413(edge, tls):
    head = b"POST /v1/models/a/predict HTTP/1.1\r\n" + HOST + b"X-Request-ID: big.1\r\n"
    answer = exchange(tls_port(edge), head + b"Content-Length: 5000\r\n\r\n", tls=tls)
    assert answer.status == 413
    error = answer.error()
    assert error["code"] == "body_too_large"
    assert error["details"] == {"max_body_bytes": MAX_BODY_BYTES}
    assert error["request_id"] == "big.1"


# -- X-Request-ID -------------------------------------------------------------------------------


@pytest.mark.parametrize("incoming", ["edge-test.1:ok", "a" * 128])
def test_a_sane_request_id_reaches_the_app_and_comes_back(edge, tls, incoming):
    answer = request(
        tls_port(edge), "GET", "/v1/nope", tls=tls, headers=own_bucket(**{"X-Request-ID": incoming})
    )
    assert answer.status == 404  # the app's
    assert answer.error()["request_id"] == incoming


@pytest.mark.parametrize("incoming", ['bad"id', "a" * 129, "a b", "id\\u0000", "<script>"])
def test_any_other_request_id_is_replaced_before_the_app_sees_it(edge, tls, incoming):
    answer = request(
        tls_port(edge), "GET", "/v1/nope", tls=tls, headers=own_bucket(**{"X-Request-ID": incoming})
    )
    # The app keeps the id Nginx passed (it makes its own for one it does not accept): the
    # one in its body is Nginx's.
    assert answer.status == 404
    assert GENERATED_ID.fullmatch(answer.error()["request_id"])
    # In a body Nginx makes itself too, where it could otherwise break the JSON.
    head = b"POST /v1/models/a/predict HTTP/1.1\r\n" + HOST
    raw = head + b"X-Request-ID: " + incoming.encode() + b"\r\nContent-Length: 5000\r\n\r\n"
    made = exchange(tls_port(edge), raw, tls=tls)
    assert made.status == 413
    assert GENERATED_ID.fullmatch(made.error()["request_id"])


# -- limits ---------------------------------------------------------------------------------------


def burst(edge, tls, *, source: str, token: str | None = None, count: int = 12) -> list[Answer]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    connection = http.client.HTTPSConnection(
        "127.0.0.1", tls_port(edge), timeout=TIMEOUT_S, source_address=(source, 0), context=tls
    )
    answers = []
    try:
        for _ in range(count):
            connection.request("GET", "/healthz", headers=headers)
            response = connection.getresponse()
            answers.append(Answer(response.status, response.headers, response.read()))
    finally:
        connection.close()
    return answers


def test_the_rate_limit_is_per_api_key_and_answers_429_with_retry_after(edge, tls):
    answers = burst(edge, tls, source="127.0.0.10", token="edge-key-a")
    statuses = [answer.status for answer in answers]
    # The burst (and what the rate refills meanwhile) passes; the rest is refused.
    assert statuses.count(200) >= BURST and statuses.count(429) >= 1, statuses
    assert set(statuses) == {200, 429}
    refused = next(answer for answer in answers if answer.status == 429)
    assert refused.headers["Retry-After"] == "1"
    assert refused.headers["Strict-Transport-Security"] == HSTS
    assert refused.error()["code"] == "rate_limited"
    # Another key from the same address has a bucket of its own ...
    other = request(
        tls_port(edge),
        "GET",
        "/healthz",
        tls=tls,
        source="127.0.0.10",
        headers={"Authorization": "Bearer edge-key-b"},
    )
    assert other.status == 200
    # ... and the first key is served again once the rate has refilled its bucket.

    def served_again():
        """edge-key-a is served again"""
        headers = {"Authorization": "Bearer edge-key-a"}
        answer = request(tls_port(edge), "GET", "/healthz", tls=tls, headers=headers)
        return answer.status == 200

    eventually(served_again, timeout=10, interval=0.5)


def test_without_a_key_the_rate_limit_is_per_client_address(edge, tls):
    statuses = [answer.status for answer in burst(edge, tls, source="127.0.0.11")]
    assert 429 in statuses, statuses
    # Not the key-less bucket of everyone: another address is served.
    assert request(tls_port(edge), "GET", "/healthz", tls=tls, source="127.0.0.12").status == 200


def hold_request(edge, tls, source: str) -> ssl.SSLSocket:
    """A request in progress: its header sent, its body never finished."""
    sock = socket.create_connection(("127.0.0.1", tls_port(edge)), TIMEOUT_S, (source, 0))
    sock = tls.wrap_socket(sock, server_hostname="127.0.0.1")
    sock.sendall(b"POST /healthz HTTP/1.1\r\n" + HOST + b"Content-Length: 100\r\n\r\nx")
    return sock


def test_requests_in_progress_are_limited_per_client_address(edge, tls):
    source = "127.0.0.13"
    held = [hold_request(edge, tls, source) for _ in range(CONN_LIMIT)]
    try:

        def refused():
            """a request past the connection limit is refused"""
            answer = request(tls_port(edge), "GET", "/healthz", tls=tls, source=source)
            return answer if answer.status == 429 else None

        answer = eventually(refused, timeout=5)
        assert answer.headers["Retry-After"] == "1"
        assert answer.error()["code"] == "too_many_connections"
        # Another address is not held back.
        other = request(tls_port(edge), "GET", "/healthz", tls=tls, source="127.0.0.14")
        assert other.status == 200
    finally:
        for sock in held:
            sock.close()

    def served_again():
        """the address is served again once its requests are gone"""
        return request(tls_port(edge), "GET", "/healthz", tls=tls, source=source).status == 200

    eventually(served_again, timeout=10, interval=0.5)


# -- the admin API's networks ---------------------------------------------------------------


def admin(edge, tls, path: str, source: str) -> Answer:
    # A key of its own for each request: the rate limit stays out of the way.
    token = f"edge-admin-{source}-{time.monotonic_ns()}"
    return request(
        tls_port(edge),
        "POST",
        path,
        tls=tls,
        source=source,
        headers={"Authorization": f"Bearer {token}", "Content-Length": "0"},
    )


@pytest.mark.parametrize("source", ["127.0.0.1", LISTED_ADMIN_ADDRESS])
def test_loopback_and_listed_networks_reach_the_admin_api(edge, tls, source):
    answer = admin(edge, tls, "/v1/admin/models/iris/promote", source)
    # The app's own answer (no admin key is configured), not the edge's.
    assert answer.status in (401, 403)
    assert answer.error()["code"] != "forbidden_network"


@pytest.mark.parametrize(
    "path",
    [
        "/v1/admin/models/iris/promote",
        "/v1/admin/reload",
        "/v1//admin/reload",
        "/v1/%61dmin/reload",
        "/v1/models/../admin/reload",
    ],
)
def test_other_addresses_get_a_json_403_from_the_edge(edge, tls, path):
    answer = admin(edge, tls, path, "127.0.0.2")
    assert answer.status == 403
    assert answer.error()["code"] == "forbidden_network"
    assert answer.headers["Strict-Transport-Security"] == HSTS


def test_other_routes_stay_open_to_other_addresses(edge, tls):
    answer = request(tls_port(edge), "GET", "/healthz", tls=tls, source="127.0.0.2")
    assert answer.status == 200


# -- HTTPS ------------------------------------------------------------------------------------


def test_https_answers_with_the_certificate_and_hsts(edge, tls, certificate):
    sock = socket.create_connection(("127.0.0.1", tls_port(edge)), TIMEOUT_S)
    with tls.wrap_socket(sock, server_hostname="127.0.0.1") as secure:
        presented = secure.getpeercert(binary_form=True)
        assert secure.version() in ("TLSv1.2", "TLSv1.3")
    assert presented == ssl.PEM_cert_to_DER_cert(certificate[0].read_text())
    answer = request(tls_port(edge), "GET", "/readyz", tls=tls, headers=own_bucket())
    assert answer.status == 200
    assert answer.headers["Strict-Transport-Security"] == HSTS
    assert edge.tls_url == f"https://127.0.0.1:{tls_port(edge)}"


def old_protocol_client(version: ssl.TLSVersion) -> ssl.SSLContext:
    """A client that offers one protocol version only, whatever this machine's defaults."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.minimum_version = version
    context.maximum_version = version
    return context


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls_1_1_is_refused_and_1_2_accepted(edge):
    sock = socket.create_connection(("127.0.0.1", tls_port(edge)), TIMEOUT_S)
    with pytest.raises(ssl.SSLError) as refused:
        old_protocol_client(ssl.TLSVersion.TLSv1_1).wrap_socket(sock).close()
    sock.close()
    # The server said no (an alert), not this client's library.
    assert "ALERT_PROTOCOL_VERSION" in str(refused.value), refused.value
    sock = socket.create_connection(("127.0.0.1", tls_port(edge)), TIMEOUT_S)
    with old_protocol_client(ssl.TLSVersion.TLSv1_2).wrap_socket(sock) as accepted:
        assert accepted.version() == "TLSv1.2"


def test_plain_http_is_redirected_to_https_with_method_and_body_kept(edge):
    answer = request(edge.port, "POST", "/v1/models/iris/predict?x=1", tls=None)
    assert answer.status == 308
    assert answer.headers["Location"] == (
        f"https://127.0.0.1:{tls_port(edge)}/v1/models/iris/predict?x=1"
    )
    assert "Strict-Transport-Security" not in answer.headers


def test_plain_http_sent_to_the_https_port_is_a_json_400(edge):
    answer = request(tls_port(edge), "GET", "/healthz", tls=None)
    assert answer.status == 400
    assert answer.error()["code"] == "plain_http_to_https_port"


# -- upstream failures and a stalled client: a bare Nginx -------------------------------------


class ScriptedUpstream(socketserver.ThreadingTCPServer):
    """An upstream that answers by path: /garbage an invalid header, /hang nothing."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), ScriptedHandler)
        self.hung: list[socket.socket] = []


class ScriptedHandler(socketserver.BaseRequestHandler):
    def handle(self):
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.request.recv(4096)
            if not chunk:
                return
            data += chunk
        if data.startswith(b"GET /garbage"):
            self.request.sendall(b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n")
        elif data.startswith(b"GET /hang"):
            self.request.settimeout(TIMEOUT_S)
            with contextlib.suppress(OSError):
                self.request.recv(1)  # until Nginx gives up and closes


@pytest.fixture(scope="module")
def bare_edge(tmp_path_factory) -> Iterator[tuple[int, ScriptedUpstream]]:
    """Nginx from the same template, default settings, in front of ScriptedUpstream, with
    proxy_read_timeout and client_header_timeout shortened to 1 s."""
    require_nginx()
    runtime_dir = tmp_path_factory.mktemp("bare-edge")
    (runtime_dir / "nginx-tmp").mkdir()
    upstream = ScriptedUpstream()
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port = free_port()
    config = render_nginx_config(
        NGINX_TEMPLATE.read_text(),
        listen=f"127.0.0.1:{port}",
        upstreams=[f"127.0.0.1:{upstream.server_address[1]}"],
        runtime_dir=runtime_dir,
        settings=Settings(),
    )
    for directive in ("proxy_read_timeout 65s;", "client_header_timeout 10s;"):
        assert config.count(directive) == 1
        config = config.replace(directive, directive.split()[0] + " 1s;")
    (runtime_dir / "nginx.conf").write_text(config)
    process = subprocess.Popen(
        [
            *(nginx_binary(), "-p", str(runtime_dir), "-c", str(runtime_dir / "nginx.conf")),
            *("-e", str(runtime_dir / "nginx-error.log"), "-g", "daemon off;"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def listening():
            """the bare Nginx accepts connections"""
            assert process.poll() is None, (runtime_dir / "nginx-error.log").read_text()
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                return True
            return False

        eventually(listening, timeout=15, interval=0.05)
        yield port, upstream
    finally:
        process.send_signal(signal.SIGQUIT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        upstream.shutdown()
        upstream.server_close()


def test_upstream_failures_are_json(bare_edge):
    port, upstream = bare_edge
    headers = {"X-Request-ID": "up-1"}
    # An upstream that answers nonsense (a 502) is, to the client, unavailable: try again.
    garbage = request(port, "GET", "/garbage", tls=None, headers=headers)
    assert garbage.status == 503
    assert garbage.error() == {
        "code": "upstream_unavailable",
        "message": "no model-service server answered; try again",
        "request_id": "up-1",
    }
    assert garbage.headers["Retry-After"] == "1"
    # One that does not answer in time.
    started = time.monotonic()
    hang = request(port, "GET", "/hang", tls=None, headers=headers)
    assert hang.status == 504 and hang.error()["code"] == "upstream_timeout"
    assert time.monotonic() - started < 5
    # None listening at all.
    upstream.shutdown()
    upstream.server_close()
    gone = request(port, "POST", "/v1/models/iris/predict", tls=None, headers=headers)
    assert gone.status == 503 and gone.error()["code"] == "upstream_unavailable"


def test_a_client_that_stalls_is_disconnected_without_an_answer(bare_edge):
    """Nginx has no 408 page to send: it drops the connection (a reset, as
    reset_timedout_connection frees its memory at once) and logs a 408."""
    port, _ = bare_edge
    with socket.create_connection(("127.0.0.1", port), TIMEOUT_S) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n" + HOST)
        started = time.monotonic()
        try:
            received = sock.recv(4096)
        except ConnectionResetError:
            received = b""
        assert received == b""
        assert 0.5 < time.monotonic() - started < 5
