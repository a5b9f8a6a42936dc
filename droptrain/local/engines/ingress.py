"""The local endpoint's kept connections to Ray Serve's HTTP ingress (HAProxy, or Ray's own proxy)."""

from __future__ import annotations

import http.client
import threading


class Connections:
    """Keep-alive HTTP connections to Ray Serve's ingress, shared by every thread: each request takes an
    idle one (an ``HTTPConnection`` serves one request at a time) and gives it back after the answer.
    Not one per thread: the local API starts a thread per client connection, and a connection per
    thread would be opened for every client's first request and left open after its thread ended.
    One closed while idle is opened again once."""

    MAX_IDLE = 32  # kept for the next requests; more than this many at once are opened for the burst, then closed

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def post(
        self, path: str, body: bytes, headers: dict[str, str], timeout: float, fresh: bool = False
    ) -> tuple[int, bytes]:
        """``(status, body)``; over a new connection when ``fresh``."""
        while True:
            with self._lock:
                connection = self._idle.pop() if self._idle and not fresh else None
            reused = connection is not None
            if connection is None:
                connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
            elif connection.sock is not None:
                connection.sock.settimeout(timeout)
            try:
                connection.request("POST", path, body=body, headers=headers)
                response = connection.getresponse()
                answer = response.status, response.read()
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                if not (reused and isinstance(exc, (ConnectionError, http.client.BadStatusLine))):
                    raise
                continue
            self._give_back(connection, response.will_close)
            return answer

    def _give_back(self, connection: http.client.HTTPConnection, closing: bool) -> None:
        with self._lock:
            if not closing and len(self._idle) < self.MAX_IDLE:
                self._idle.append(connection)
                return
        connection.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
