"""The fault-injection suite: each test reproduces one defect found by probing the local stack with
hostile input, crashes and restarts, and holds the fix. ``make test`` runs it (marker ``faults``)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from droptrain.local.runtime import LocalRuntime
from helpers import deploy_archive


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.faults)


@pytest.fixture(scope="module")
def served(trained_job, ray_serve, tmp_path_factory, shared_warm):
    """A local stack on loopback serving the trained model (no training: the archive is deployed as is)."""
    runtime = LocalRuntime(
        tmp_path_factory.mktemp("served") / "home", say=lambda m: None, serving=ray_serve, warm=shared_warm
    )
    runtime.start(port=0, watch=False)
    try:
        deploy_archive(runtime, trained_job["archive"], "pets-1a2b3c4d")
        yield runtime
    finally:
        runtime.stop()


def raw_http(url: str, request: bytes, timeout: float = 30, read_all: bool = True) -> bytes:
    """Send bytes as they are (headers a client library would refuse to send) and read the answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as conn:
        conn.sendall(request)
        chunks = []
        while True:
            try:
                chunk = conn.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if not read_all and b"\r\n\r\n" in b"".join(chunks):
                break
    return b"".join(chunks)


def status_and_json(raw: bytes) -> tuple[int, dict]:
    import json

    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    return status, json.loads(body) if body else {}
