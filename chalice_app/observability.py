"""Logging with correlation ids, metrics and tracing through aws-lambda-powertools.

Powertools costs tens of milliseconds to import, so its objects are made on first use rather than
when ``app`` is imported. Its handler decorators expect ``(event, context)``; Chalice handlers take
one argument, so ``app.py`` applies these through Chalice middleware instead.
"""

from __future__ import annotations

import functools
import logging

SERVICE = "droptrain"
# In Lambda, Powertools reads its POWERTOOLS_* variables. A host process that is not a Lambda (the
# local runtime) says what it wants here instead of rewriting its environment; Powertools' tracer
# turns itself off outside Lambda.
_settings: dict[str, object] = {}


def configure(level: str | None = None, metrics_enabled: bool = True) -> None:
    """This process's logging level and whether it records metrics."""
    _settings.update(metrics=metrics_enabled)
    if level:
        logger().setLevel(level)


@functools.cache
def logger():
    from aws_lambda_powertools import Logger  # deferred: a handler pays for what it uses, once

    return Logger(service=SERVICE)


@functools.cache
def metrics():
    from aws_lambda_powertools import Metrics  # deferred, as above

    return Metrics(namespace="droptrain", service=SERVICE)


@functools.cache
def tracer():
    from aws_lambda_powertools import Tracer  # deferred, as above

    return Tracer(service=SERVICE)


_recorded = False


def count(name: str, value: float = 1, unit: str = "Count") -> None:
    global _recorded
    if not _settings.get("metrics", True):
        return
    metrics().add_metric(name=name, unit=unit, value=value)
    _recorded = True


def flush() -> None:
    """Publish this invocation's metrics (as CloudWatch EMF log lines), if it recorded any."""
    global _recorded
    if not _recorded:
        return
    _recorded = False
    try:
        metrics().flush_metrics()
    except Exception as exc:  # noqa: BLE001 - losing a metric must never fail a request or an event
        logging.getLogger(__name__).warning("metrics not flushed: %s", exc)
