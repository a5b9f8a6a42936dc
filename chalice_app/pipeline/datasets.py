"""A dataset arrived: check it, then start its tuning job."""

from __future__ import annotations

from chalice_app import names, sagemaker_requests as requests, validation
from chalice_app.events import ObjectCreated
from chalice_app.notifications import Notification
from chalice_app.pipeline.services import Services


def dataset_uploaded(svc: Services, event: ObjectCreated) -> str:
    config = svc.config
    if event.bucket != config.data_bucket:
        return f"ignored: bucket {event.bucket} is not {config.data_bucket}"
    dataset = names.parse_dataset_key(event.bucket, event.key, config.dataset_prefix)
    if dataset is None:
        return f"ignored: {event.key} is neither a dataset's {names.READY_MARKER} marker nor an archive"
    run = names.run_id(dataset, event.etag)
    problem = names.dataset_name_problem(dataset.name)
    if problem:
        report = validation.DatasetReport(checked="name", reasons=[problem])
    elif dataset.kind == "folder":
        report = validation.check_folder(svc.s3, dataset)
    else:
        report = validation.check_archive(svc.s3, dataset, event.size or svc.s3.head(dataset.bucket, dataset.key)["size"],
                                          svc.config.volume_size_gb)
    request = None
    if report.ok:
        # Built before anything is announced: a name or tag SageMaker would refuse rejects the dataset.
        try:
            request = requests.tuning_job_request(config, run, dataset)
        except names.InvalidNameError as exc:
            report.reasons.append(str(exc))
    if not report.ok:
        svc.notifier.send(Notification(
            "dataset.rejected", run, dataset.uri, "Rejected", f"{dataset.name} rejected: {report.reasons[0]}",
            detail=report.detail(),
        ))
        return f"rejected: {'; '.join(report.reasons)}"
    classes = f"{len(report.classes)} classes" if report.classes else "archive"
    svc.notifier.send(Notification(
        "dataset.accepted", run, dataset.uri, "Accepted", f"{dataset.name} accepted ({classes}), run {run}",
        detail=report.detail(),
    ))
    created = svc.sagemaker.create_tuning_job(request)
    job_config = request["HyperParameterTuningJobConfig"]
    svc.notifier.send(Notification(
        "tuning.started", run, dataset.uri, "InProgress",
        f"tuning {run}: {config.tuning_strategy}, up to {config.max_tuning_jobs} trials", job=run,
        detail={
            "strategy": config.tuning_strategy,
            "objective": requests.OBJECTIVE,
            "max_training_jobs": job_config["ResourceLimits"].get("MaxNumberOfTrainingJobs"),
            "max_parallel_jobs": config.max_parallel_jobs,
            "instance_type": config.training_instance_type,
            "spot": config.use_spot,
            "tuned": sorted(r["Name"] for ranges in job_config["ParameterRanges"].values() for r in ranges),
        },
    ))
    return "tuning job created" if created else "tuning job already existed"
