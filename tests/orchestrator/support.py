"""Helpers for the orchestrator's tests: request validation against the service model, and a client
that sends a few operations to a botocore Stubber where moto falls short."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import botocore.session
import regex
from botocore.model import ListShape, MapShape, Shape, StringShape, StructureShape
from botocore.validate import ParamValidator

EVENTS = Path(__file__).resolve().parent.parent / "events"
_session = botocore.session.get_session()


def service_model(service: str):
    return _session.get_service_model(service)


def constraint_errors(shape: Shape, value: Any, path: str = "") -> list[str]:
    """The length/pattern/enum/range violations botocore does not check (it checks types and required)."""
    errors: list[str] = []
    meta = shape.metadata
    if isinstance(shape, StructureShape):
        for name, member in shape.members.items():
            if isinstance(value, dict) and name in value:
                errors += constraint_errors(member, value[name], f"{path}.{name}")
        return errors
    if isinstance(shape, ListShape):
        if "max" in meta and len(value) > meta["max"]:
            errors.append(f"{path}: {len(value)} items > max {meta['max']}")
        if "min" in meta and len(value) < meta["min"]:
            errors.append(f"{path}: {len(value)} items < min {meta['min']}")
        for i, item in enumerate(value):
            errors += constraint_errors(shape.member, item, f"{path}[{i}]")
        return errors
    if isinstance(shape, MapShape):
        if "max" in meta and len(value) > meta["max"]:
            errors.append(f"{path}: {len(value)} entries > max {meta['max']}")
        for key, item in value.items():
            errors += constraint_errors(shape.key, key, f"{path}<key {key}>")
            errors += constraint_errors(shape.value, item, f"{path}[{key}]")
        return errors
    if isinstance(shape, StringShape) or shape.type_name == "string":
        if "max" in meta and len(value) > meta["max"]:
            errors.append(f"{path}: {value!r} longer than {meta['max']}")
        if "min" in meta and len(value) < meta["min"]:
            errors.append(f"{path}: {value!r} shorter than {meta['min']}")
        if "pattern" in meta and not regex.fullmatch(meta["pattern"], value):
            errors.append(f"{path}: {value!r} does not match {meta['pattern']}")
        if shape.enum and value not in shape.enum:
            errors.append(f"{path}: {value!r} not one of {shape.enum}")
        return errors
    if shape.type_name in ("integer", "long", "float", "double"):
        if "max" in meta and value > meta["max"]:
            errors.append(f"{path}: {value} > max {meta['max']}")
        if "min" in meta and value < meta["min"]:
            errors.append(f"{path}: {value} < min {meta['min']}")
    return errors


def validate(service: str, operation: str, params: dict[str, Any]) -> None:
    """Both checks: botocore's own parameter validation, then the model's constraints."""
    shape = service_model(service).operation_model(operation).input_shape
    report = ParamValidator().validate(params, shape)
    assert not report.has_errors(), report.generate_report()
    errors = constraint_errors(shape, params)
    assert not errors, "\n".join(errors)


class Routed:
    """A boto3 client whose named operations go to another client (a Stubber's), the rest to moto.

    A tuning job's trials (ListTrainingJobsForHyperParameterTuningJob, which moto lacks) are the
    Stubber's when a test queued them, and none otherwise (as for a tuning job whose trials are gone)."""

    EMPTY_WHEN_NOT_QUEUED = {"list_training_jobs_for_hyper_parameter_tuning_job": {"TrainingJobSummaries": []}}

    def __init__(self, default: Any, overrides: dict[str, Any], stubber: Any = None):
        self._default = default
        self._overrides = overrides
        self._stubber = stubber

    def __getattr__(self, name: str) -> Any:
        if name in self.EMPTY_WHEN_NOT_QUEUED and self._stubber is not None and name in self._overrides:
            queue = self._stubber._queue  # botocore's Stubber keeps its expected calls in order here
            if not queue or queue[0]["operation_name"] != self._stubber.client.meta.method_to_api_mapping[name]:
                return lambda **kwargs: dict(self.EMPTY_WHEN_NOT_QUEUED[name])
        return getattr(self._overrides.get(name, self._default), name)


def event(name: str, **detail_overrides: Any) -> dict[str, Any]:
    data = json.loads((EVENTS / name).read_text())
    data["detail"].update(detail_overrides)
    return data
