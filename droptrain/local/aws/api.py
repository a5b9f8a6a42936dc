"""The local API: Chalice's local gateway behind an HTTP server that holds up as API Gateway does.

API Gateway refuses an oversized body before Lambda runs, answers in its own shapes for routes that
do not exist (the stack's gateway responses put them in ours), checks API keys, and drops clients
that never finish their request. Chalice's development server does none of that: this module adds
it, and leaves routing and the handlers to Chalice.

* the body is judged by its ``Content-Length`` before a byte of it is read: missing (with a body),
  malformed, given twice with different values, beside ``Transfer-Encoding`` (the two ways to
  smuggle a second request inside the first) or over the limit is a 400, 411 or 413 in the API's
  error shape, and the connection is closed;
* a client that stalls mid-request is timed out (``REQUEST_TIMEOUT_SECONDS``), and one that trickles
  its request a byte at a time is cut at ``REQUEST_DEADLINE_SECONDS`` for the whole of it, freeing
  its thread; at most ``MAX_CONNECTIONS`` at once (one thread each), a burst beyond that waits in the
  listen backlog (``BACKLOG``) and, past ``CONNECTION_WAIT_SECONDS``, gets a 503;
* the ``Host`` header must name this server (an IP address, ``localhost``, this machine's name or
  the name it was bound to): a page whose own domain was pointed at 127.0.0.1 (DNS rebinding) reaches
  nothing. State-changing routes also check Content-Type and Origin (``http_errors.cross_site_refusal``,
  on Lambda as here);
* every answer that is not the handlers' own (no such route, a method the route lacks, Chalice's
  500, a request line or headers http.server cannot take: 400, 414, 431) is rewritten to
  ``{"error": {"code", "message"}}``; a client that went away is no traceback;
* with an API key, requests without ``x-api-key`` set to it get 403, as API Gateway does.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import socket
import threading
import time
from typing import Any

from chalice.local import ChaliceRequestHandler, LocalDevServer, LocalGatewayException, ThreadedHTTPServer

from chalice_app.http_errors import error_body

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_SECONDS = 30
REQUEST_DEADLINE_SECONDS = 60
MAX_CONNECTIONS = 100
CONNECTION_WAIT_SECONDS = 2
BACKLOG = 128
# Bodies API Gateway would accept at all (10 MB); the route applies its own, smaller limit.
MAX_CONTENT_LENGTH = 10 * 1024 * 1024
BODY_METHODS = ("POST", "PUT", "PATCH")
OPEN_PATHS = ("/", "/console.js", "/console.css", "/openapi.json")


class RequestRejected(Exception):
    """The request cannot be passed on: answered with ``status`` and the API's error shape."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code = status, code


def content_length(headers: Any, method: str, limit: int) -> int:
    """The body's length from the headers (an ``email.message.Message``), or ``RequestRejected``
    before any of it is read."""
    lengths = {value.strip() for value in headers.get_all("content-length") or []}
    if lengths and headers.get("transfer-encoding"):
        raise RequestRejected(400, "bad_request", "send Content-Length or Transfer-Encoding, not both")
    if len(lengths) > 1:
        raise RequestRejected(400, "bad_request", "Content-Length is given twice, with different values")
    if not lengths:
        if headers.get("transfer-encoding"):
            raise RequestRejected(411, "length_required", "send the body with a Content-Length header")
        return 0
    raw = lengths.pop()
    # Digits only, and few enough of them to be a length at all (int() would take "+1_0" or 10^23).
    if not raw.isascii() or not raw.isdigit() or len(raw) > 15:
        raise RequestRejected(400, "bad_request", "the Content-Length header is not a byte count")
    length = int(raw)
    if length > limit:
        raise RequestRejected(413, "payload_too_large", f"the body is {length} bytes; the limit is {limit} bytes")
    if length and method not in BODY_METHODS:
        raise RequestRejected(400, "bad_request", f"a {method} request has no body")
    return length


def host_is_ours(host_header: str | None, names: frozenset[str]) -> bool:
    """Whether a ``Host`` header names this server: any IP address (no page can rebind one), or one of
    ``names``; no header (HTTP/1.0) is fine."""
    if not host_header:
        return True
    host = host_header.strip().lower()
    host = host[1 : host.index("]")] if host.startswith("[") and "]" in host else host.rsplit(":", 1)[0]
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return host.rstrip(".") in names


def own_names(bound_to: str) -> frozenset[str]:
    """The names a client of this machine may put in ``Host``."""
    return frozenset(name.lower() for name in ("localhost", socket.gethostname(), socket.getfqdn(), bound_to) if name)


class ApiServer(ThreadedHTTPServer):
    """One thread per connection, at most ``max_connections`` of them, each request's reading cut at its deadline."""

    request_queue_size = BACKLOG
    daemon_threads = True
    block_on_close = False
    max_connections = MAX_CONNECTIONS
    connection_wait = CONNECTION_WAIT_SECONDS

    def __init__(self, *args: Any, **kwargs: Any):
        self._slots = threading.BoundedSemaphore(self.max_connections)
        self._deadlines: dict[socket.socket, float] = {}
        self._deadlines_lock = threading.Lock()
        self._closed = threading.Event()
        super().__init__(*args, **kwargs)  # a port it cannot bind: server_close, then OSError
        threading.Thread(target=self._cut_late_requests, daemon=True, name="api-deadlines").start()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(timeout=self.connection_wait):
            _answer_busy(request)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def arm(self, connection: socket.socket, seconds: float) -> None:
        with self._deadlines_lock:
            self._deadlines[connection] = time.monotonic() + seconds

    def disarm(self, connection: socket.socket) -> None:
        with self._deadlines_lock:
            self._deadlines.pop(connection, None)

    def _cut_late_requests(self) -> None:
        # The socket timeout ends a client that sends nothing; one sending a byte now and then is cut here.
        while not self._closed.wait(0.25):
            now = time.monotonic()
            with self._deadlines_lock:
                late = [conn for conn, deadline in self._deadlines.items() if deadline < now]
                for conn in late:
                    del self._deadlines[conn]
            for conn in late:
                try:
                    conn.shutdown(socket.SHUT_RDWR)  # its thread's read returns at once, and it ends
                except OSError:
                    pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.warning("the local API's connection from %s failed", client_address, exc_info=True)

    def server_close(self) -> None:
        self._closed.set()
        super().server_close()


def _answer_busy(request: socket.socket) -> None:
    body = json.dumps(error_body("too_many_connections", "the local API is at its connection limit: retry")).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    try:
        request.settimeout(1)
        request.sendall(head.encode() + body)
    except OSError:
        pass


class ApiRequestHandler(ChaliceRequestHandler):
    timeout = REQUEST_TIMEOUT_SECONDS  # socket timeout: a stalled client frees its thread
    # An answer goes out as two writes (headers, then body). With Nagle's algorithm on, the body waited
    # for the client's delayed ACK of the headers on a kept-alive connection: 40 ms more a request.
    disable_nagle_algorithm = True
    max_content_length = MAX_CONTENT_LENGTH
    deadline = REQUEST_DEADLINE_SECONDS
    api_key: str | None = None
    host_names: frozenset[str] = frozenset({"localhost"})
    server: ApiServer

    def handle_one_request(self) -> None:
        self.server.arm(self.connection, self.deadline)  # reading the request: line, headers, body
        try:
            super().handle_one_request()
        except OSError:  # the client went away, or was cut at its deadline: nobody to answer
            self.close_connection = True
        finally:
            self.server.disarm(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass  # the answer's last bytes had no one to go to

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (a request line or headers it cannot take), in the API's shape."""
        self.close_connection = True
        words = {400: "bad_request", 414: "uri_too_long", 431: "headers_too_large", 501: "method_not_allowed"}
        reason = message or self.responses.get(code, ("the request was refused",))[0]
        self._send_json(code, words.get(code, "bad_request"), f"{reason} (HTTP {code})")

    def _parse_payload(self) -> tuple[dict, bytes | None]:
        length = content_length(self.headers, self.command, self.max_content_length)
        body = self.rfile.read(length) if length else None
        if body is not None and len(body) < length:
            raise RequestRejected(400, "bad_request", "the body ended before its Content-Length")
        return dict(self.headers), body

    def _generic_handle(self) -> None:
        try:
            if not host_is_ours(self.headers.get("host"), self.host_names):
                raise RequestRejected(400, "bad_host", "the Host header does not name this server")
            self._check_key()
            headers, body = self._parse_payload()
            self.server.disarm(self.connection)  # read in time: the handler's own work is not cut
        except RequestRejected as exc:
            self.close_connection = True  # the unread body must not be taken for the next request
            self._send_json(exc.status, exc.code, str(exc))
            return
        except (TimeoutError, ConnectionError):
            self.close_connection = True
            return
        try:
            response = self.local_gateway.handle_request(
                method=self.command, path=self.path, headers=headers, body=body
            )
        except LocalGatewayException as exc:  # no such route, or the authorizer's refusal
            message = _message_of(exc.body)
            # API Gateway's own answer for a route it does not have is a 403 "Missing Authentication
            # Token"; the stack's gateway responses give it this shape and code (template.py).
            code = (
                "missing_authentication_token"
                if message == "Missing Authentication Token"
                else {401: "unauthorized"}.get(exc.CODE, "forbidden")
            )
            self._send_json(exc.CODE, code, message)
            return
        out_headers = {**response["headers"], **response["multiValueHeaders"]}
        response = self._handle_binary(response)
        self._send_http_response(response["statusCode"], out_headers, response["body"])

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = do_PATCH = do_OPTIONS = _generic_handle

    def _check_key(self) -> None:
        # The console's page and files carry no data and no secret: open, as on API Gateway.
        if self.api_key is None or (self.command == "GET" and self.path.split("?")[0] in OPEN_PATHS):
            return
        given = self.headers.get("x-api-key") or ""
        if not hmac.compare_digest(given.encode(), self.api_key.encode()):
            raise RequestRejected(403, "forbidden", "send the stack's API key in the x-api-key header")

    def _send_json(self, status: int, code: str, message: str) -> None:
        body = json.dumps(error_body(code, message)).encode()
        if getattr(self, "request_version", "") in ("", "HTTP/0.9"):  # none read, or not one we speak
            self.request_version = "HTTP/1.1"  # else http.server would send the body without a status line
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the runtime's console shows pipeline events, not an access log


def _message_of(body: bytes | str | None) -> str:
    try:
        parsed = json.loads(body or b"{}")
    except ValueError:
        return "the request was refused"
    return (
        str(parsed.get("message") or parsed.get("Message") or "the request was refused")
        if isinstance(parsed, dict)
        else "the request was refused"
    )


def create_server(
    app_obj: Any,
    config: Any,
    host: str,
    port: int,
    api_key: str | None = None,
    max_content_length: int = MAX_CONTENT_LENGTH,
    request_timeout: float = REQUEST_TIMEOUT_SECONDS,
    request_deadline: float = REQUEST_DEADLINE_SECONDS,
    max_connections: int = MAX_CONNECTIONS,
    connection_wait: float = CONNECTION_WAIT_SECONDS,
) -> LocalDevServer:
    """A ``LocalDevServer`` bound to ``host:port`` (``OSError`` when it cannot be)."""
    handler = type(
        "Handler",
        (ApiRequestHandler,),
        {
            "api_key": api_key,
            "max_content_length": max_content_length,
            "timeout": request_timeout,
            "deadline": request_deadline,
            "host_names": own_names(host),
        },
    )
    server = type("Server", (ApiServer,), {"max_connections": max_connections, "connection_wait": connection_wait})
    return LocalDevServer(app_obj, config, host, port, handler_cls=handler, server_cls=server)
