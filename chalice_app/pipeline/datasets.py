"""A dataset arrived: check it, then start its tuning job."""

from __future__ import annotations

from chalice_app import cost, names, sagemaker_requests as requests, validation
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
    request = forecast = None
    if report.ok:
        # Built before anything is announced: a name or tag SageMaker would refuse, or a budget the
        # run cannot fit, rejects the dataset.
        training, hosting = _prices(svc)
        try:
            run_plan = cost.plan(config, report.images, training, requests.configured_trials(config))
            forecast = cost.forecast(config, report.images, run_plan, training, hosting)
            request = requests.tuning_job_request(config, run, dataset, run_plan)
        except (names.InvalidNameError, cost.BudgetError) as exc:
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
    trials = job_config["ResourceLimits"].get("MaxNumberOfTrainingJobs") or forecast["trials"]
    price = f", about ${forecast['run_usd']:.2f}" if forecast.get("run_usd") is not None else ""
    svc.notifier.send(Notification(
        "tuning.started", run, dataset.uri, "InProgress",
        f"tuning {run}: {config.tuning_strategy}, up to {trials} trials{price}", job=run,
        detail={
            "strategy": config.tuning_strategy,
            "objective": requests.OBJECTIVE,
            "max_training_jobs": job_config["ResourceLimits"].get("MaxNumberOfTrainingJobs"),
            "max_parallel_jobs": job_config["ResourceLimits"]["MaxParallelTrainingJobs"],
            "forecast": forecast,
            "instance_type": config.training_instance_type,
            "spot": config.use_spot,
            "tuned": sorted(r["Name"] for ranges in job_config["ParameterRanges"].values() for r in ranges),
        },
    ))
    return "tuning job created" if created else "tuning job already existed"


def _prices(svc: Services) -> tuple[cost.Price | None, cost.Price | None]:
    """The training and hosting prices of the stage's instance types, where known."""
    if svc.prices is None:
        return None, None
    config = svc.config
    hosting = None if config.serverless else svc.prices.hourly(config.inference_instance_type, "Hosting")
    return svc.prices.hourly(config.training_instance_type, "Training"), hosting
