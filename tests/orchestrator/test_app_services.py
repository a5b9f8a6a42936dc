"""Services are passed to an app, never installed process-wide: two apps in one process stay apart."""

from __future__ import annotations

from chalice.test import Client

from chalice_app import config
from chalice_app.application import create_app
from chalice_app.pipeline import Services
from orchestrator.test_requests import BASE_ENV


def _services(problem: str) -> Services:
    """Services whose stack reports one problem: ``GET /status`` answers it without any AWS call."""
    return Services(
        config=config.load(BASE_ENV),
        s3=None,
        sagemaker=None,
        runtime=None,
        notifier=None,
        sleep=lambda seconds: None,
        alarms=None,
        problems=lambda: [problem],
    )


def _status(app) -> tuple[int, str]:
    with Client(app) as client:
        response = client.http.get("/status")
    return response.status_code, response.json_body["error"]["message"]


def test_two_apps_in_one_process_each_use_their_own_services():
    first = create_app(BASE_ENV, _services("first stack's watcher stopped"))
    second = create_app(BASE_ENV, _services("second stack's watcher stopped"))
    assert _status(first) == (503, "first stack's watcher stopped")
    assert _status(second) == (503, "second stack's watcher stopped")
    # A third app built later changes neither.
    create_app(BASE_ENV, _services("third"))
    assert _status(first) == (503, "first stack's watcher stopped")


def test_an_app_without_services_builds_them_from_its_own_environment():
    """As on Lambda: nothing is built at import, and a bad variable is reported on use, naming it."""
    broken = {k: v for k, v in BASE_ENV.items() if k != "SAGEMAKER_ROLE_ARN"}
    app = create_app(broken)
    with Client(app) as client:
        response = client.http.get("/status")
    assert response.status_code == 503 and response.json_body["error"]["code"] == "misconfigured"
    # Given services are used as they are: the environment is not read for them.
    assert _status(create_app(broken, _services("given"))) == (503, "given")
