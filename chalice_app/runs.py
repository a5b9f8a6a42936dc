"""Runs as the console shows them, read from what the pipeline already writes: each notification's
marker (``runs/<run-id>/…/notifications/<event>.json``, the whole message), the final job's reports
(``runs/<run-id>/reports/``) and SageMaker's own records of the tuning job and its trials. No
database of its own: what the console shows is what the pipeline did.
"""

from __future__ import annotations

import json
from typing import Any

from chalice_app import names
from chalice_app.adapters.errors import NotFoundError
from chalice_app.pipeline.services import Services, read_json

# The happy path, in order; a run's state is how far along it got, or where it stopped.
STEPS = (
    "dataset.accepted",
    "tuning.started",
    "tuning.completed",
    "training.started",
    "training.completed",
    "model.registered",
    "model.approved",
    "deployment.started",
    "deployment.completed",
)
STOPPED = ("dataset.rejected", "tuning.failed", "training.failed", "deployment.failed", "model.held")
REPORT_URL_SECONDS = 300
MAX_RUNS = 100


class RunNotFoundError(Exception):
    status, code = 404, "unknown_run"


def _marker_keys(svc: Services, run: str) -> list[str]:
    """Every notification marker of the run: its own, and those of each deployment and approval."""
    bucket = svc.config.data_bucket
    keys = [k for k, _ in svc.s3.list_objects(bucket, f"runs/{run}/notifications/")]
    for folder in ("deployments", "approvals"):
        keys += [k for k, _ in svc.s3.list_objects(bucket, f"runs/{run}/{folder}/") if "/notifications/" in k]
    return [k for k in keys if k.endswith(".json")]


def _event_of(key: str) -> str:
    return key.rsplit("/", 1)[1].removesuffix(".json")


def state_of(events: list[str]) -> str:
    """``deployed``, ``held``, ``failed at <step>``, ``rejected`` or ``in progress``."""
    if "dataset.rejected" in events:
        return "rejected"
    failed = [e for e in events if e.endswith(".failed")]
    if failed:
        return f"failed at {failed[-1].removesuffix('.failed')}"
    if "deployment.completed" in events:
        return "deployed"
    if "model.held" in events and "model.approved" not in events:
        return "held"
    return "in progress"


def list_runs(svc: Services) -> list[dict[str, Any]]:
    """Every run (newest first by its first notification), with its project, state and steps."""
    runs = []
    for prefix in svc.s3.list_prefixes(svc.config.data_bucket, "runs/")[-MAX_RUNS:]:
        run = prefix.removeprefix("runs/").rstrip("/")
        if run.startswith("_"):
            continue  # runs/_events/: failures of events that named no run
        events = sorted({_event_of(k) for k in _marker_keys(svc, run)}, key=_order)
        if not events:
            continue
        first = read_json(svc, f"runs/{run}/notifications/{events[0]}.json") or {}
        runs.append(
            {
                "run_id": run,
                "project": names.project_of_run(run),
                "dataset": first.get("dataset"),
                "started_at": first.get("time"),
                "state": state_of(events),
                "events": events,
            }
        )
    return sorted(runs, key=lambda r: r["started_at"] or "", reverse=True)


def _order(event: str) -> int:
    return STEPS.index(event) if event in STEPS else len(STEPS)


def run_detail(svc: Services, run: str) -> dict[str, Any]:
    """The run's timeline, tuning trials, test metrics, evaluation, debugger verdicts and report link."""
    keys = _marker_keys(svc, run)
    if not keys:
        raise RunNotFoundError(f"there is no run {run!r}")
    timeline = []
    for key in keys:
        message = read_json(svc, key)
        if isinstance(message, dict):
            timeline.append({k: message.get(k) for k in ("event", "time", "status", "job", "detail")})
    timeline.sort(key=lambda m: (m["time"] or "", _order(m["event"] or "")))
    events = [m["event"] or "" for m in timeline]
    reports = f"runs/{run}/reports/"
    evaluation = read_json(svc, reports + "evaluation.json")
    return {
        "run_id": run,
        "project": names.project_of_run(run),
        "state": state_of(events),
        "timeline": timeline,
        "tuning": _tuning(svc, run),
        "final": _final(svc, run),
        "evaluation": evaluation if isinstance(evaluation, dict) else None,
        "rules": read_json(svc, reports + "rules.json"),
        "report": f"runs/{run}/report" if _exists(svc, reports + "report.html") else None,
    }


def _exists(svc: Services, key: str) -> bool:
    try:
        svc.s3.head(svc.config.data_bucket, key)
    except NotFoundError:
        return False
    return True


def _tuning(svc: Services, run: str) -> dict[str, Any] | None:
    try:
        job = svc.sagemaker.describe_tuning_job(run)
    except NotFoundError:
        return None
    best = (job.get("BestTrainingJob") or {}).get("TrainingJobName")
    trials = []
    for trial in svc.sagemaker.list_trials(run):
        objective = trial.get("FinalHyperParameterTuningJobObjectiveMetric") or {}
        trials.append(
            {
                "name": trial["TrainingJobName"],
                "status": trial.get("TrainingJobStatus"),
                "hyperparameters": trial.get("TunedHyperParameters", {}),
                "objective": objective.get("Value"),
                "failure_reason": trial.get("FailureReason"),
                "best": trial["TrainingJobName"] == best,
            }
        )
    trials.sort(key=lambda t: t["name"])
    return {
        "status": job.get("HyperParameterTuningJobStatus"),
        "strategy": job.get("HyperParameterTuningJobConfig", {}).get("Strategy"),
        "objective": job.get("HyperParameterTuningJobConfig", {})
        .get("HyperParameterTuningJobObjective", {})
        .get("MetricName"),
        "best": best,
        "trials": trials,
    }


def _final(svc: Services, run: str) -> dict[str, Any] | None:
    try:
        job = svc.sagemaker.describe_training_job(names.final_job_name(run))
    except NotFoundError:
        return None
    return {
        "name": job.get("TrainingJobName"),
        "status": job.get("TrainingJobStatus"),
        "metrics": {m["MetricName"]: m["Value"] for m in job.get("FinalMetricDataList", [])},
        "failure_reason": job.get("FailureReason"),
        "billable_seconds": job.get("BillableTimeInSeconds"),
    }


def report(svc: Services, run: str) -> tuple[str, str | bytes]:
    """``("redirect", url)`` to a short-lived presigned URL of the run's training report, or
    ``("html", bytes)`` where the store has no URLs (the local bucket)."""
    key = f"runs/{run}/reports/report.html"
    if not _exists(svc, key):
        raise RunNotFoundError(f"run {run!r} has no training report")
    url = svc.s3.presigned_url(svc.config.data_bucket, key, REPORT_URL_SECONDS)
    if url:
        return "redirect", url
    return "html", svc.s3.get(svc.config.data_bucket, key)


def as_json(value: Any) -> Any:
    """Datetimes and the like as strings, so that the route's JSON is plain."""
    return json.loads(json.dumps(value, default=str))
