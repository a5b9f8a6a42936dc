"""The local API: Chalice's local gateway behind an HTTP server that holds up as API Gateway does.

API Gateway refuses an oversized body before Lambda runs, answers in its own shapes for routes that
do not exist (the stack's gateway responses put them in ours), checks API keys, and drops clients
that never finish their request. Chalice's development server does none of that: this module adds
it, and leaves routing and the handlers to Chalice.

* the body is judged by its ``Content-Length`` before a byte of it is read: missing (with a body),
  malformed or over the limit is a 400, 411 or 413 in the API's error shape, and the connection is
  closed;
* a client that stalls mid-request is timed out (``REQUEST_TIMEOUT_SECONDS``), freeing its thread;
* a listen backlog that holds bursts of clients (``BACKLOG``), one thread per connection;
* every answer that is not the handlers' own (no such route, a method the route lacks, Chalice's
  500) is rewritten to ``{"error": {"code", "message"}}``;
* with an API key, requests without ``x-api-key`` set to it get 403, as API Gateway does.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from chalice.local import ChaliceRequestHandler, LocalDevServer, LocalGatewayException, ThreadedHTTPServer

from chalice_app.handlers import error_body

REQUEST_TIMEOUT_SECONDS = 30
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
    """The body's length from the headers, or ``RequestRejected`` before any of it is read."""
    raw = headers.get("content-length")
    if raw is None:
        if headers.get("transfer-encoding"):
            raise RequestRejected(411, "length_required", "send the body with a Content-Length header")
        return 0
    raw = raw.strip()
    # Digits only, and few enough of them to be a length at all (int() would take "+1_0" or 10^23).
    if not raw.isascii() or not raw.isdigit() or len(raw) > 15:
        raise RequestRejected(400, "bad_request", "the Content-Length header is not a byte count")
    length = int(raw)
    if length > limit:
        raise RequestRejected(413, "payload_too_large", f"the body is {length} bytes; the limit is {limit} bytes")
    if length and method not in BODY_METHODS:
        raise RequestRejected(400, "bad_request", f"a {method} request has no body")
    return length


class ApiServer(ThreadedHTTPServer):
    request_queue_size = BACKLOG
    daemon_threads = True
    block_on_close = False


class ApiRequestHandler(ChaliceRequestHandler):
    timeout = REQUEST_TIMEOUT_SECONDS  # socket timeout: a stalled client frees its thread
    # An answer goes out as two writes (headers, then body). With Nagle's algorithm on, the body waited
    # for the client's delayed ACK of the headers on a kept-alive connection: 40 ms more a request.
    disable_nagle_algorithm = True
    max_content_length = MAX_CONTENT_LENGTH
    api_key: str | None = None

    def _parse_payload(self) -> tuple[dict, bytes | None]:
        length = content_length(self.headers, self.command, self.max_content_length)
        body = self.rfile.read(length) if length else None
        if body is not None and len(body) < length:
            raise RequestRejected(400, "bad_request", "the body ended before its Content-Length")
        return dict(self.headers), body

    def _generic_handle(self) -> None:
        try:
            self._check_key()
            headers, body = self._parse_payload()
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
) -> LocalDevServer:
    """A ``LocalDevServer`` bound to ``host:port`` (``OSError`` when it cannot be)."""
    handler = type(
        "Handler",
        (ApiRequestHandler,),
        {"api_key": api_key, "max_content_length": max_content_length, "timeout": request_timeout},
    )
    return LocalDevServer(app_obj, config, host, port, handler_cls=handler, server_cls=ApiServer)
