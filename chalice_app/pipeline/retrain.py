"""Retrain (docs/operations.md, "Review and retrain"): a new run from where the serving version stands.

``POST /projects/{project}/retrain`` starts a final training job at once, no tuning: the serving
version's hyperparameters made incremental, warm-started from its weights, on its dataset plus the review
queue's labelled images (``chalice_app.retrain_requests``). Its end goes the way every final job's goes:
registered, judged by the gate against the serving version (on the same held-out split, the held-out
reviewed images among it), deployed only if it passes.
"""

from __future__ import annotations

import uuid
from typing import Any

from chalice_app import capture, names, retrain_requests
from chalice_app import sagemaker_requests as requests
from chalice_app.adapters.errors import NotFoundError
from chalice_app.notifications import Notification
from chalice_app.pipeline.batch import NoServingVersionError
from chalice_app.pipeline.review import ReviewError, classes_of, known_classes, labelled_counts
from chalice_app.pipeline.services import Services, dataset_of
from chalice_app.pipeline.versions import VersionError, project_versions


class CannotRetrainError(VersionError):
    status, code = 409, "cannot_retrain"


def start(svc: Services, project: str, request: Any) -> dict[str, Any]:
    """A warm-started run of ``project``; the answer says which, from what, and with what."""
    if request != {}:  # None: the body was not JSON
        raise ReviewError("send an empty JSON object {}: a retrain takes no options")
    slug = names.project_of(project)
    serving = next((v for v in project_versions(svc, slug) if v["serving"]), None)
    if serving is None or not serving.get("model_data"):
        raise NoServingVersionError(f"project {slug} serves no version: there is nothing to retrain from")
    try:
        job = svc.sagemaker.describe_training_job(names.final_job_name(serving["run_id"]))
    except NotFoundError:
        raise CannotRetrainError(
            f"the serving version's training job {names.final_job_name(serving['run_id'])} is gone: "
            "upload the dataset again to tune a new run"
        ) from None
    dataset_uri = serving.get("dataset") or dataset_of(job)
    if not dataset_uri:
        raise CannotRetrainError(f"the serving version {serving['run_id']} names no dataset to retrain on")
    counts = labelled_counts(svc, slug)
    reviewed = f"s3://{svc.config.data_bucket}/{capture.review_prefix(slug, 'labelled/')}" if counts else None
    run = names.check(f"{slug}-{uuid.uuid4().hex[:8]}", "tuning job")
    request = retrain_requests.retrain_request(svc.config, run, dataset_uri, job, serving["model_data"], reviewed)
    svc.sagemaker.create_training_job(request)
    serving_classes = classes_of(svc, serving["run_id"])
    detail = {
        "warm_start_from": serving["run_id"],
        "reviewed_images": {name: splits for name, splits in sorted(counts.items())},
        "new_classes": [c for c in known_classes(svc, slug) if serving_classes and c not in serving_classes],
        "hyperparameters": {k: v for k, v in request["HyperParameters"].items() if not k.startswith("sagemaker_")},
        "baseline": serving["model_data"],
        "instance_type": svc.config.training_instance_type,
        "instance_count": svc.config.final_instance_count,
        # As every final job's training.started says them.
        "input_mode": requests.training_input_mode(request),
        "managed_debugger": svc.config.managed_debugger,
    }
    svc.notifier.send(
        Notification(
            "training.started",
            run,
            dataset_uri,
            "InProgress",
            f"retraining {slug} from {serving['run_id']}: {request['TrainingJobName']} started",
            job=request["TrainingJobName"],
            detail=detail,
        )
    )
    return {"project": slug, "run_id": run, "job": request["TrainingJobName"], "dataset": dataset_uri, **detail}
