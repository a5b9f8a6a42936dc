"""A tuning job ended (the final training job starts), or one of its trials failed."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from chalice_app import failures, names
from chalice_app import sagemaker_requests as requests
from chalice_app.adapters.errors import NotFoundError
from chalice_app.events import TrainingJobStateChange, TuningJobStateChange
from chalice_app.notifications import Notification
from chalice_app.pipeline.deployment import serving_run
from chalice_app.pipeline.services import TERMINAL, Services, dataset_of, prune_checkpoints


def serving_model_data(svc: Services, project: str, run: str) -> str | None:
    """The ``model.tar.gz`` the project's endpoint serves (the gate's baseline), if it is a droptrain run's."""
    serving = serving_run(svc, project)
    if not serving or serving == run:
        return None
    try:
        job = svc.sagemaker.describe_training_job(names.final_job_name(serving))
    except NotFoundError:
        return None  # deployed by hand, or its job is gone: the gate falls back to the serving run's own evaluation
    return job.get("ModelArtifacts", {}).get("S3ModelArtifacts") or None


def tuning_changed(svc: Services, event: TuningJobStateChange) -> str:
    if event.status not in TERMINAL:
        return f"ignored: tuning status {event.status}"
    tags, description = event.tags, None
    if names.TAG_RUN_ID not in tags:
        # AWS's own example of this event has "Tags": {}: the job's tags are then read, as for training jobs.
        description = svc.sagemaker.describe_tuning_job(event.name)
        tags = svc.sagemaker.list_tags(description["HyperParameterTuningJobArn"])
    if names.TAG_RUN_ID not in tags:
        return f"ignored: tuning job {event.name} is not droptrain's"
    event = dataclasses.replace(event, tags=tags)
    run = tags[names.TAG_RUN_ID]
    prune_checkpoints(svc, run, "tuning")
    description = description or svc.sagemaker.describe_tuning_job(event.name)
    dataset_uri = names.dataset_of_tags(tags) or dataset_of(description)
    counters = description.get("TrainingJobStatusCounters", {})
    best = description.get("BestTrainingJob") or {}
    if event.status != "Completed" or not best.get("TrainingJobName") or not best.get("TunedHyperParameters"):
        return _tuning_failed(svc, event, run, dataset_uri, description)
    if dataset_uri is None:  # its training channel names it: only a tuning job made by hand lacks one
        return f"ignored: tuning job {event.name} names no dataset"
    objective = best.get("FinalHyperParameterTuningJobObjectiveMetric", {})
    tuned = best["TunedHyperParameters"]
    svc.notifier.send(
        Notification(
            "tuning.completed",
            run,
            dataset_uri,
            "Completed",
            f"tuning {run} done: {objective.get('MetricName', requests.OBJECTIVE)} "
            f"{objective.get('Value', float('nan')):.4f}",
            job=event.name,
            detail={
                "best_training_job": best["TrainingJobName"],
                "best_hyperparameters": tuned,
                "objective": objective,
                "training_jobs": counters,
            },
        )
    )
    return _start_final(svc, run, dataset_uri, description, tuned)


def _start_final(svc: Services, run: str, dataset_uri: str, description: dict[str, Any], tuned: dict[str, str]) -> str:
    """The final job: the best trial's hyperparameters, the trials' limits and channels, the serving baseline."""
    static = description["TrainingJobDefinition"].get("StaticHyperParameters", {})
    baseline = serving_model_data(svc, names.project_of_run(run), run)
    # The final job gets the trials' runtime limit: a run's budget bounded them both.
    limit = description["TrainingJobDefinition"].get("StoppingCondition", {}).get("MaxRuntimeInSeconds")
    # The trials' audit channel (AUDIT_FIX), if they had one: the final job drops the same images.
    audit = next(
        (
            c["DataSource"]["S3DataSource"]["S3Uri"]
            for c in description["TrainingJobDefinition"].get("InputDataConfig", [])
            if c.get("ChannelName") == "audit"
        ),
        None,
    )
    mode = requests.training_input_mode(description["TrainingJobDefinition"])
    request = requests.final_training_request(svc.config, run, dataset_uri, static, tuned, baseline, limit, audit, mode)
    created = svc.sagemaker.create_training_job(request)
    svc.notifier.send(
        Notification(
            "training.started",
            run,
            dataset_uri,
            "InProgress",
            f"final training {request['TrainingJobName']} started",
            job=request["TrainingJobName"],
            detail={
                "hyperparameters": {
                    k: v for k, v in request["HyperParameters"].items() if not k.startswith("sagemaker_")
                },
                "baseline": baseline,
                "instance_type": svc.config.training_instance_type,
                "instance_count": svc.config.final_instance_count,
                "input_mode": mode,
                "managed_debugger": svc.config.managed_debugger,
            },
        )
    )
    return "final training job created" if created else "final training job already existed"


def trial_failures(svc: Services, tuning_job: str) -> list[dict[str, Any]]:
    """The distinct reasons the tuning job's trials failed, most frequent first, with their trials."""
    by_reason: dict[str, list[str]] = {}
    for trial in svc.sagemaker.list_trials(tuning_job):
        if trial.get("TrainingJobStatus") == "Failed":
            reason = failures.named(trial.get("FailureReason") or "no reason given")
            by_reason.setdefault(reason, []).append(trial["TrainingJobName"])
    ordered = sorted(by_reason.items(), key=lambda item: -len(item[1]))
    return [{"reason": reason, "trials": sorted(jobs)} for reason, jobs in ordered]


def _tuning_failed(
    svc: Services, event: TuningJobStateChange, run: str, dataset_uri: str | None, description: Mapping[str, Any]
) -> str:
    counters = description.get("TrainingJobStatusCounters", {})
    failed_trials = trial_failures(svc, event.name)
    if failed_trials:
        # What the trials said is what a person can act on; the tuning job's own reason only
        # says that they failed.
        reason = failed_trials[0]["reason"] + (
            f" (and {len(failed_trials) - 1} other reasons, in detail.trial_failures)" if len(failed_trials) > 1 else ""
        )
    elif event.status == "Completed":
        reason = (
            f"no trial succeeded ({counters.get('NonRetryableError', 0)} failed, {counters.get('Stopped', 0)} stopped)"
        )
    else:
        reason = description.get("FailureReason") or f"the tuning job was {event.status.lower()}"
    status = "NoSuccessfulTrial" if event.status == "Completed" else event.status
    outcome = "had no successful trial" if status == "NoSuccessfulTrial" else status.lower()
    svc.notifier.send(
        Notification(
            "tuning.failed",
            run,
            dataset_uri,
            status,
            f"tuning {run} {outcome}: {reason}",
            job=event.name,
            detail={
                "reason": reason,
                "trial_failures": failed_trials,
                "training_jobs": counters,
                "tuning_job_reason": description.get("FailureReason"),
            },
        )
    )
    return f"tuning {outcome}"


def trial_changed(svc: Services, event: TrainingJobStateChange) -> str:
    """A tuning trial ended. One that failed on the dataset or the weights would fail in every other
    trial too: the tuning job is stopped rather than left to run them all."""
    if event.status != "Failed":
        return f"ignored: trial {event.name} {event.status.lower()}"
    reason = event.failure_reason or svc.sagemaker.describe_training_job(event.name).get("FailureReason")
    if not names.repeats_in_every_trial(reason):
        return f"ignored: trial {event.name} failed on its own hyperparameters"
    tuning_arn = event.tuning_job_arn or ""
    if names.TAG_RUN_ID not in svc.sagemaker.list_tags(tuning_arn):
        return f"ignored: {tuning_arn} is not droptrain's"
    tuning_job = tuning_arn.rsplit("/", 1)[-1]
    stopped = svc.sagemaker.stop_tuning_job(tuning_job)
    return f"{'stopped' if stopped else 'already ended:'} tuning job {tuning_job}: every trial would fail: {reason}"
