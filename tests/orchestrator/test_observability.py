"""Metrics and logs of the handlers: EMF lines when a handler recorded metrics, never a failure from them."""

from __future__ import annotations

import json

import pytest

from chalice_app import observability


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "droptrain-test")
    observability.metrics.cache_clear()
    observability.configure(metrics_enabled=True)
    yield
    observability.metrics.cache_clear()
    observability.configure(metrics_enabled=True)


def test_a_recorded_metric_is_flushed_as_one_emf_line(capsys):
    observability.count("Predictions")
    observability.flush()
    (line,) = [json.loads(out) for out in capsys.readouterr().out.splitlines() if out.startswith("{")]
    assert line["Predictions"] == [1.0] and line["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Name"] == "Predictions"
    observability.flush()
    assert capsys.readouterr().out == "", "nothing recorded since: nothing flushed"


def test_a_metric_that_cannot_be_flushed_never_fails_the_handler(monkeypatch, caplog):
    observability.count("Predictions")

    def broken():
        raise RuntimeError("CloudWatch EMF is unhappy")

    monkeypatch.setattr(observability.metrics(), "flush_metrics", broken)
    observability.flush()
    assert "metrics not flushed: CloudWatch EMF is unhappy" in caplog.text


def test_a_process_that_is_not_a_lambda_can_turn_metrics_off(capsys):
    observability.configure(metrics_enabled=False)
    observability.count("Predictions")
    observability.flush()
    assert capsys.readouterr().out == ""
