"""Hostile requests to the local API: bodies judged before they are read, clients that stall, bursts of
clients, images that claim gigabytes, framework errors in the API's shape, an API key when asked."""

from __future__ import annotations

import functools
import json
import select
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from faults.conftest import raw_http, status_and_json
from PIL import Image

from helpers import DEADLINE, png_bytes, png_header_only

ROOT = Path(__file__).resolve().parents[2]


def _post(url: str, body: bytes, content_type: str = "image/png", headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{url}/predict", data=body, method="POST", headers={"Content-Type": content_type, **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _get(url: str, headers: dict | None = None) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _standalone(**options):
    """The local API's server around the app alone (no stack): what it does before any handler runs."""
    from chalice.config import Config

    from chalice_app.application import create_app
    from droptrain.local.aws import api
    from droptrain.local.runtime import local_environment

    server = api.create_server(
        create_app(local_environment()),
        Config.create(chalice_stage="local", app_name="droptrain"),
        "127.0.0.1",
        0,
        **options,
    )
    threading.Thread(target=server.server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server.server_address[1]}"


# -- bodies, judged by their Content-Length ----------------------------------------------------------


@pytest.mark.parametrize(
    "header, status, code",
    [
        ("Content-Length: 400000000", 413, "payload_too_large"),  # refused before a byte of it is sent
        ("Content-Length: abc", 400, "bad_request"),
        ("Content-Length: 100000000000000000000000", 400, "bad_request"),
        ("Content-Length: -5", 400, "bad_request"),
        ("Transfer-Encoding: chunked", 411, "length_required"),
    ],
)
def test_the_body_is_judged_by_its_length_before_it_is_read(served, header, status, code):
    request = f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n{header}\r\n\r\n".encode()
    answered, body = status_and_json(raw_http(served.api_url, request, timeout=10))
    assert (answered, body["error"]["code"]) == (status, code), body


def test_a_body_shorter_than_its_length_is_refused_not_waited_for_forever(served):
    request = (
        b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
        b"Content-Length: 100\r\n\r\n\xff\xd8\xff"
    )
    host, port = served.api_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(request)
        conn.shutdown(socket.SHUT_WR)  # the client is done sending: 97 bytes short
        answer = b""
        while chunk := conn.recv(65536):  # until the server closes the connection
            answer += chunk
    status, body = status_and_json(answer)
    assert (status, body["error"]["code"]) == (400, "bad_request")


def test_clients_that_never_send_their_body_are_timed_out_and_free_their_threads():
    server, url = _standalone(request_timeout=0.5)
    try:
        port = server.server.server_address[1]
        stalled = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(8)]
        for i, conn in enumerate(stalled):
            # Half stop in the headers (a slowloris client), half before the body they announced.
            conn.sendall(
                b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                if i % 2
                else b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
                b"Content-Length: 10\r\n\r\n"
            )
        for conn in stalled:  # each is dropped by the server (EOF), not left hanging
            assert conn.recv(1024) == b""
            conn.close()
        healthy = raw_http(url, b"GET /nope HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert status_and_json(healthy)[0] == 403, "the server still answers"
    finally:
        server.shutdown()
        server.server.server_close()


# -- framework errors, routes that do not exist, the API key -----------------------------------------


def test_framework_errors_answer_in_the_api_shape(served):
    status, body = _get(f"{served.api_url}/predict")
    assert status == 405 and body == {"error": {"code": "method_not_allowed", "message": "Unsupported method: GET"}}
    status, body = _get(f"{served.api_url}/no/such/route")
    assert status == 403 and body["error"]["code"] == "missing_authentication_token"
    status, body = _post(served.api_url, b"\xff\xd8\xff", content_type="text/plain")
    assert status == 415 and set(body) == {"error"} and body["error"]["code"] == "unsupported_media_type"


def test_an_api_key_is_required_when_the_stack_has_one():
    server, url = _standalone(api_key="s3cret-key")
    try:
        for headers in ({}, {"x-api-key": "wrong"}, {"x-api-key": "s3cret-key-and-more"}):
            status, body = _get(f"{url}/status", headers)
            assert (status, body["error"]["code"]) == (403, "forbidden")
        status, body = _get(f"{url}/no/such/route", {"x-api-key": "s3cret-key"})
        assert (status, body["error"]["code"]) == (403, "missing_authentication_token"), "past the key check"
        for path in ("/runs", "/projects", "/projects/pets/versions/previous/deploy"):
            status, _ = _get(f"{url}{path}")
            assert status == 403, path
        # The console's page and files hold no data and no secret: open, as on API Gateway.
        for path in ("/", "/console.js", "/console.css"):
            with urllib.request.urlopen(f"{url}{path}") as response:
                assert response.status == 200 and response.headers["Content-Security-Policy"], path
    finally:
        server.shutdown()
        server.server.server_close()


def test_a_burst_of_clients_is_held_with_no_connection_refused_or_reset(served):
    results: list[int | str] = []

    def client():
        try:
            results.append(_get(f"{served.api_url}/status")[0])
        except OSError as exc:
            results.append(type(exc).__name__)

    threads = [threading.Thread(target=client) for _ in range(48)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == [200] * 48


def test_kept_alive_connections_send_answers_without_nagles_delay():
    """An answer is written in two parts (headers, body); with Nagle's algorithm on, the body waits for
    a kept-alive client's delayed ACK of the headers (40 ms on Linux). The server's sockets turn it off."""
    import http.client

    server, _ = _standalone()
    accepted: list[int] = []
    handler = server.server.RequestHandlerClass  # Chalice's partial(handler class, app, config)

    class Probe(handler.func):
        def setup(self):
            super().setup()
            accepted.append(self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    server.server.RequestHandlerClass = functools.partial(Probe, *handler.args, **handler.keywords)
    try:
        connection = http.client.HTTPConnection("127.0.0.1", server.server.server_address[1], timeout=30)
        for _ in range(2):  # two requests on one connection
            connection.request("GET", "/openapi.json")
            response = connection.getresponse()
            assert response.status == 200 and response.read()
        connection.close()
        assert len(accepted) == 1 and accepted[0] != 0
    finally:
        server.shutdown()
        server.server.server_close()


# -- images that claim more than they are ------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        png_header_only(100_000, 1),
        png_header_only(400_000, 1),
        png_header_only(13_000, 13_000),
        png_header_only(20_000, 20_000),  # past PIL's own decompression-bomb limit (178 MP)
    ],
    ids=["100000x1", "400000x1", "13000x13000", "20000x20000"],
)
def test_images_that_claim_gigabytes_get_image_too_large(served, body):
    status, answer = _post(served.api_url, body)
    assert (status, answer["error"]["code"]) == (400, "image_too_large"), answer


def test_undecodable_images_are_described_without_python_reprs(served):
    status, answer = _post(served.api_url, b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    assert (status, answer["error"]["code"]) == (400, "invalid_image")
    assert " at 0x" not in answer["error"]["message"] and "<" not in answer["error"]["message"]


def test_a_large_transparent_png_is_served(served):
    image = Image.new("RGBA", (7000, 5700), (0, 0, 0, 0))  # 39.9 megapixels, all transparent: white
    status, answer = _post(served.api_url, png_bytes(image))
    assert status == 200 and answer["predictions"], answer


# One process imports the decoder (and torch) once, then forks a child per image: a child's peak starts
# at what it holds when forked (Linux resets the high-water mark), so each child measures one decode
# as a fresh process would, without importing torch again for each.
_MEASURE = """
import os, resource, sys
sys.path.insert(0, sys.argv[1])
from trainlib import predictor
for path in sys.argv[2:]:
    child = os.fork()
    if child == 0:
        body = open(path, "rb").read()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        image = predictor.decode(body)
        print(path, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024, flush=True)
        os._exit(0)
    assert os.waitpid(child, 0)[1] == 0, path
"""
LARGEST = [
    ("RGBA", "PNG", (7000, 5700)),
    ("P", "PNG", (7000, 5700)),
    ("RGB", "JPEG", (7000, 5700)),
    # 40 megapixels with a short side of 1,024-2,047: once decoded whole, then converted whole.
    ("RGBA", "PNG", (19999, 2000)),
    ("CMYK", "JPEG", (19999, 2000)),
]


@pytest.fixture(scope="module")
def decode_peaks(tmp_path_factory) -> dict[str, int]:
    """Peak memory of one decode of each of the largest images allowed, in bytes, by file name."""
    folder = tmp_path_factory.mktemp("largest")
    paths = []
    for mode, fmt, size in LARGEST:
        path = folder / f"{mode}-{size[0]}x{size[1]}.{fmt.lower()}"
        fill = {"RGBA": (10, 200, 30, 128), "RGB": (10, 200, 30), "P": 3, "CMYK": (10, 200, 30, 5)}[mode]
        Image.new(mode, size, fill).save(path, fmt)
        paths.append(str(path))
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(ROOT / "training"), *paths],
        capture_output=True,
        text=True,
        check=True,
        timeout=DEADLINE,
    )
    peaks = dict(line.rsplit(" ", 1) for line in out.stdout.splitlines() if line.startswith(str(folder)))
    return {Path(path).name: int(peak) for path, peak in peaks.items()}


@pytest.mark.parametrize("mode, fmt, size", LARGEST)
def test_decoding_the_largest_image_allowed_costs_under_300_mb(decode_peaks, mode, fmt, size):
    """Peak memory of one decode in a process of its own: the 40-megapixel image itself, never copies of it."""
    peak = decode_peaks[f"{mode}-{size[0]}x{size[1]}.{fmt.lower()}"]
    assert peak < 300 * 1024**2, f"{mode} {fmt}: {peak / 1024**2:.0f} MB"


# -- other sites, smuggled requests, requests http.server cannot take, clients that trickle ----------


def _code(answer: bytes) -> tuple[int, str]:
    status, body = status_and_json(answer)
    return status, body.get("error", {}).get("code", "")


def test_a_page_of_another_site_cannot_deploy_and_a_rebound_host_reaches_nothing(served):
    url = served.api_url
    host, port = url.removeprefix("http://").split(":")
    endpoint = served.store.names("endpoint")[0]
    serving = served.endpoints.describe(endpoint)["EndpointConfigName"]
    deploys = len([n for n in served.notifications() if n["message"]["event"] == "deployment.started"])
    for extra, refusal in (
        # What fetch(..., {mode: "no-cors"}) from any page sends: no JSON Content-Type, the page's Origin.
        ("Origin: http://evil.example\r\n", (415, "unsupported_media_type")),
        ("Content-Type: text/plain\r\nOrigin: http://evil.example\r\n", (415, "unsupported_media_type")),
        ("Content-Type: application/json\r\nOrigin: http://evil.example\r\n", (403, "foreign_origin")),
        ("Content-Type: application/json\r\nOrigin: null\r\n", (403, "foreign_origin")),
    ):
        request = (
            f"POST /projects/pets/versions/previous/deploy HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}"
            "Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        assert _code(raw_http(url, request.encode())) == refusal, extra
    # DNS rebinding: the page's own name, pointed at 127.0.0.1, in Host.
    for rebound in ("evil.example", f"evil.example:{port}"):
        request = f"GET /projects HTTP/1.1\r\nHost: {rebound}\r\nConnection: close\r\n\r\n"
        assert _code(raw_http(url, request.encode())) == (400, "bad_host"), rebound
    assert served.endpoints.describe(endpoint)["EndpointConfigName"] == serving
    assert len([n for n in served.notifications() if n["message"]["event"] == "deployment.started"]) == deploys
    request = f"GET /projects HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n"
    assert status_and_json(raw_http(url, request.encode()))[0] == 200, "this machine's own names are fine"


@pytest.mark.parametrize(
    "headers",
    [
        "Content-Length: 0\r\nContent-Length: 66\r\n",
        "Content-Length: 66\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 66\r\n",
    ],
)
def test_a_smuggled_second_request_is_never_run(headers):
    server, url = _standalone()
    try:
        smuggled = b"GET /openapi.json HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        assert len(smuggled) == 66
        answer = raw_http(
            url,
            f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n{headers}\r\n".encode()
            + smuggled,
        )
        assert answer.count(b"HTTP/1.1 ") == 1, answer[:500]
        assert _code(answer) == (400, "bad_request")
    finally:
        server.shutdown()
        server.server.server_close()


@pytest.mark.parametrize(
    "request_bytes, status, code",
    [
        (b"GARBAGE\r\n\r\n", 400, "bad_request"),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 414, "uri_too_long"),
        (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(200)) + b"\r\n", 431, "headers_too_large"),
    ],
)
def test_requests_http_server_refuses_are_answered_in_the_api_shape(request_bytes, status, code):
    server, url = _standalone()
    try:
        answer = raw_http(url, request_bytes)
        head = answer.partition(b"\r\n\r\n")[0]
        assert b"Content-Type: application/json" in head and b"text/html" not in answer
        assert _code(answer) == (status, code)
    finally:
        server.shutdown()
        server.server.server_close()


def _trickle(port: int, ended: list, start: bytes) -> None:
    """A client that sends its request a byte every 0.2 s, forever: never idle long enough to time out."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(start)
        try:
            while True:
                readable, _, _ = select.select([conn], [], [], 0.2)
                if readable and conn.recv(4096) == b"":
                    break
                conn.sendall(b"x")
        except OSError:
            pass
    ended.append(True)


def test_clients_that_trickle_are_cut_at_the_deadline_and_connections_are_capped():
    server, url = _standalone(request_timeout=5, request_deadline=1, max_connections=4, connection_wait=0.5)
    port = server.server.server_address[1]
    ended: list[bool] = []
    try:
        trickling = [
            threading.Thread(target=_trickle, args=(port, ended, start), daemon=True)
            for start in (b"GET /openapi.json HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ", b"G", *[b"GET /"] * 2)
        ]
        for thread in trickling:
            thread.start()
        time.sleep(0.3)  # the four hold every connection the server allows
        busy = raw_http(url, b"GET /openapi.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert _code(busy) == (503, "too_many_connections")
        for thread in trickling:
            thread.join(DEADLINE)
        assert len(ended) == 4, "the server cut each at its deadline, though none ever stopped sending"
        answer = raw_http(url, b"GET /openapi.json HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert status_and_json(answer)[0] == 200, "their threads are free again"
    finally:
        server.shutdown()
        server.server.server_close()
