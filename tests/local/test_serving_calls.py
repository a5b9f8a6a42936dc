"""How the local endpoint's calls to Ray Serve's HTTP ingress fail, against a plain HTTP server standing in
for it (the real ingress is exercised in test_local_endpoint.py and tests/training/test_serving.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from droptrain.local.engines.ingress import Connections
from droptrain.local.engines.serving import ApplicationGoneError, RayServe, ServingError
from helpers import DEADLINE


class Ingress(BaseHTTPRequestHandler):
    """Answers every POST with ``server.answer`` = (status, body); with ``server.drop_after_answer`` it
    closes the connection after answering without saying so (an idle keep-alive timing out)."""

    protocol_version = "HTTP/1.1"

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.seen.append((self.path, self.headers.get("Content-Type"), self.headers.get("Accept")))
        status, body = self.server.answer(self) if callable(self.server.answer) else self.server.answer
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = self.server.drop_after_answer

    def do_GET(self):
        """``/-/routes``: what ``server.routes`` lists now (a list is consumed one answer per request)."""
        routes = self.server.routes.pop(0) if isinstance(self.server.routes, list) else self.server.routes
        body = json.dumps(routes).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def ingress():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Ingress)
    server.answer, server.drop_after_answer, server.seen, server.routes = (200, b"{}"), False, [], {}
    # shutdown() waits for the loop's next look: half a second by default, at the end of every test here.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def serving(ingress):
    """A ``RayServe`` whose one application, ``app``, is routed to the stand-in ingress."""
    engine = RayServe()
    engine._routes["app"] = "/app"
    engine._http = Connections(*ingress.server_address[:2])
    engine.host, engine.port = ingress.server_address[:2]
    return engine


def test_a_deploy_waits_until_the_ingress_routes_the_application(serving, ingress):
    """Serve calls an application RUNNING before HAProxy has reloaded with its route."""
    naps = []
    serving.sleep = naps.append
    ingress.routes = [{}, {}, {"/other": "other"}, {"/other": "other", "/app": "app"}]
    assert serving._wait_routed("/app") == ("RUNNING", "")
    assert len(naps) == 3, "asked again until the route was there"


def test_a_route_that_never_comes_is_a_timeout_not_a_hang(serving, ingress):
    serving.ready_timeout, serving.sleep = 0, lambda seconds: None
    status, message = serving._wait_routed("/app")
    assert status == "TIMEOUT" and "did not route /app" in message


def test_the_body_goes_to_the_applications_route_with_its_content_type(serving, ingress):
    ingress.answer = (400, json.dumps({"error": {"code": "invalid_image"}}).encode())
    assert serving.call("app", b"x", "image/png", "application/json") == (400, {"error": {"code": "invalid_image"}})
    assert ingress.seen == [("/app", "image/png", "application/json")]


def test_a_connection_the_ingress_closed_while_idle_is_opened_again(serving, ingress):
    ingress.drop_after_answer = True
    for _ in range(3):
        assert serving.call("app", b"x") == (200, {})
    assert len(ingress.seen) == 3, "each request reached the ingress once"


def test_an_ingress_that_is_down_is_a_serving_error(serving, ingress):
    ingress.shutdown()
    ingress.server_close()
    with pytest.raises(ServingError, match="gave no answer"):
        serving.call("app", b"x")


def test_an_answer_that_is_not_the_applications_is_a_serving_error(serving, ingress):
    ingress.answer = (503, b"no replicas available")
    with pytest.raises(ServingError, match="answered 503") as raised:
        serving.call("app", b"x")
    assert not isinstance(raised.value, ApplicationGoneError)


def test_an_application_deleted_on_the_way_is_gone(serving, ingress):
    def deleted_meanwhile(handler):
        serving._routes.pop("app", None)
        return 404, b"Path '/app' not found."

    ingress.answer = deleted_meanwhile
    with pytest.raises(ApplicationGoneError):
        serving.call("app", b"x")
    with pytest.raises(ApplicationGoneError):
        serving.call("app", b"x")
    assert len(ingress.seen) == 1, "an application this process deleted is not called"


def test_threads_share_the_kept_connections(serving, ingress):
    """The local API runs each client connection on a thread of its own: a later thread's request
    goes over a connection an earlier one opened, rather than opening one more."""
    peers = []
    ingress.answer = lambda handler: (peers.append(handler.client_address), (200, b"{}"))[1]
    for _ in range(4):
        worker = threading.Thread(target=serving.call, args=("app", b"x"))
        worker.start()
        worker.join()
    assert len(peers) == 4 and len(set(peers)) == 1, "one connection carried all four requests"


def test_connections_beyond_the_idle_limit_are_closed_after_a_burst(serving, ingress, monkeypatch):
    monkeypatch.setattr(Connections, "MAX_IDLE", 2)
    started, release = threading.Barrier(5), threading.Event()

    def held(handler):
        started.wait(timeout=DEADLINE)  # four requests in flight at once: four connections
        release.wait(timeout=DEADLINE)
        return 200, b"{}"

    ingress.answer = held
    workers = [threading.Thread(target=serving.call, args=("app", b"x")) for _ in range(4)]
    for worker in workers:
        worker.start()
    started.wait(timeout=DEADLINE)
    release.set()
    for worker in workers:
        worker.join()
    assert len(serving._http._idle) == 2
    serving._http.close()
    assert serving._http._idle == []


@pytest.mark.parametrize(
    "status, text",
    [
        (404, b"Path '/app' not found. Ping http://.../-/routes for available routes."),  # a route added since
        (500, b"Internal Server Error"),  # an application deleted and deployed again: its old replica is gone
    ],
)
def test_a_kept_connection_from_before_haproxy_reloaded_is_asked_again_on_a_new_one(serving, ingress, status, text):
    """HAProxy reloads whenever the applications change; a connection kept from before stays with the
    previous process and its old routes, which answer in Ray's words, not the application's JSON."""
    peers, stale = [], set()

    def answer(handler):
        peers.append(handler.client_address)
        return (status, text) if handler.client_address in stale else (200, b'{"predictions": []}')

    ingress.answer = answer
    assert serving.call("app", b"x") == (200, {"predictions": []})
    stale.add(peers[0])  # the reload: the kept connection now reaches the old process
    assert serving.call("app", b"x") == (200, {"predictions": []})
    assert peers[1] == peers[0] and peers[2] != peers[0]


class Controller:
    """Serve's controller as ``RayServe`` reads and changes it: the submitted configs of the applications."""

    def __init__(self, **configs):
        self.configs = configs

    def get_serve_details(self):
        return {"applications": {name: {"deployed_app_config": config} for name, config in self.configs.items()}}

    def deploy_apps(self, schema):
        self.configs = {app.name: app.model_dump(exclude_unset=True) for app in schema.applications}


def _app_config(name):
    return {"name": name, "route_prefix": f"/{name}", "import_path": "serve_app:app"}


def test_changing_the_applications_closes_the_idle_connections(serving, ingress):
    serving._client = Controller(app=_app_config("app"))
    serving.call("app", b"x")
    assert len(serving._http._idle) == 1
    serving.delete("app")
    assert serving._http._idle == [], "kept from before HAProxy's reload: not used again"


def test_an_instance_keeps_the_applications_another_instance_deployed(serving):
    """Two ``RayServe`` joined to one Ray instance (two local stacks, tests beside them) share Serve's one
    config: each change keeps what the controller runs, whoever deployed it, and nothing is kept in a global."""
    controller = Controller(app=_app_config("app"), theirs=_app_config("theirs"))
    other = RayServe()
    other._client, other._http = controller, serving._http
    serving._client = controller
    serving.delete("app")
    assert set(controller.configs) == {"theirs"}, "another instance's application stays"
    assert other.names() == [] and serving.names() == [], "each instance answers for its own applications only"
    other._routes["theirs"] = "/theirs"
    other.delete("theirs")
    assert controller.configs == {}


def test_a_route_missing_on_a_new_connection_too_is_a_serving_error(serving, ingress):
    ingress.answer = (404, b"Path '/app' not found.")
    serving._http.post("/warm", b"", {}, 10)  # one kept connection to begin with
    ingress.seen.clear()
    with pytest.raises(ServingError, match="answered 404"):
        serving.call("app", b"x")
    assert len(ingress.seen) == 2, "asked once more on a new connection, then given up"


FAILED_START = """
import fcntl, sys
from droptrain.local.engines import privates, ray_mode, serving

taken = []
reserve = ray_mode.PortBlock.reserve
serving.PortBlock.reserve = classmethod(lambda cls: taken.append(reserve()) or taken[-1])

def serve_start(**options):
    raise RuntimeError("Serve did not start")

privates.serve_start = serve_start
made, mkdtemp = [], serving.tempfile.mkdtemp
serving.tempfile.mkdtemp = lambda **options: made.append(mkdtemp(**options)) or made[-1]
try:
    serving.RayServe().start()
except RuntimeError:
    pass
import os, ray
with open(ray_mode.PORT_LOCKS / f"{taken[0].start}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises while the block is still held
print(len(made), os.path.exists(made[0]), ray.is_initialized())
"""


def test_a_start_that_fails_leaves_no_ray_and_frees_its_ports():
    """In a process of its own: Ray starts, Serve fails to; nothing stays held for a next try."""
    result = subprocess.run([sys.executable, "-c", FAILED_START], capture_output=True, text=True, timeout=DEADLINE)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-3:] == ["1", "False", "False"], "HAProxy's folder made for it is gone too"
