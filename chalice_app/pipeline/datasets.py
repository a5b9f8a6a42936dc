"""A dataset arrived: check it cheaply, audit it (a Processing job), then start its tuning job."""

from __future__ import annotations

from chalice_app import audit_requests, cost, names, scaling, validation
from chalice_app import sagemaker_requests as requests
from chalice_app.events import ObjectCreated, ProcessingJobStateChange
from chalice_app.notifications import Notification
from chalice_app.pipeline.services import TERMINAL, Services, read_json


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
        report = validation.check_archive(
            svc.s3, dataset, event.size or svc.s3.head(dataset.bucket, dataset.key)["size"], svc.config.volume_size_gb
        )
    request = forecast = audit = None
    if report.ok:
        # Built before anything is announced: a name or tag SageMaker would refuse, or a budget the
        # run cannot fit, rejects the dataset.
        try:
            request, forecast = _tuning_request(svc, run, dataset, report.images, report.bytes, _ratio(report))
            count = audit_requests.instances(config, dataset.kind, report.images)
            audit = (
                audit_requests.audit_job_request(config, run, dataset.uri, report.bytes, count)
                if config.audit
                else None
            )
        except (names.InvalidNameError, cost.BudgetError) as exc:
            report.reasons.append(str(exc))
    if not report.ok:
        svc.notifier.send(
            Notification(
                "dataset.rejected",
                run,
                dataset.uri,
                "Rejected",
                f"{dataset.name} rejected: {report.reasons[0]}",
                detail=report.detail(),
            )
        )
        return f"rejected: {'; '.join(report.reasons)}"
    classes = f"{len(report.classes)} classes" if report.classes else "archive"
    svc.notifier.send(
        Notification(
            "dataset.accepted",
            run,
            dataset.uri,
            "Accepted",
            f"{dataset.name} accepted ({classes}), run {run}",
            detail={**report.detail(), "audit": audit["ProcessingJobName"] if audit else None},
        )
    )
    if audit is not None:
        # The audit decodes every image: its end (audit_changed) starts the tuning job, or rejects the run.
        return "audit job created" if svc.sagemaker.create_processing_job(audit) else "audit job already existed"
    assert request is not None and forecast is not None  # built above whenever the report is ok
    return _start_tuning(svc, run, dataset.uri, request, forecast)


def _tuning_request(
    svc: Services,
    run: str,
    dataset: names.DatasetRef,
    images: int,
    size: int | None,
    ratio: float | None,
    audit_uri: str | None = None,
) -> tuple[dict, dict]:
    training, hosting = _prices(svc)
    run_plan = cost.plan(svc.config, images, training, requests.configured_trials(svc.config))
    forecast = cost.forecast(svc.config, images, run_plan, training, hosting)
    return requests.tuning_job_request(svc.config, run, dataset, run_plan, audit_uri, size, ratio), forecast


def _ratio(report: validation.DatasetReport) -> float | None:
    """The largest training class over the smallest, as the cheap validation counted them (None: none counted)."""
    counts = [n for n in report.counts.get("train", {}).values() if n]
    return max(counts) / min(counts) if counts else None


def _start_tuning(svc: Services, run: str, dataset_uri: str, request: dict, forecast: dict) -> str:
    config = svc.config
    created = svc.sagemaker.create_tuning_job(request)
    job_config = request["HyperParameterTuningJobConfig"]
    trials = job_config["ResourceLimits"].get("MaxNumberOfTrainingJobs") or forecast["trials"]
    price = f", about ${forecast['run_usd']:.2f}" if forecast.get("run_usd") is not None else ""
    svc.notifier.send(
        Notification(
            "tuning.started",
            run,
            dataset_uri,
            "InProgress",
            f"tuning {run}: {config.tuning_strategy}, up to {trials} trials{price}",
            job=run,
            detail={
                "strategy": config.tuning_strategy,
                "objective": job_config["HyperParameterTuningJobObjective"]["MetricName"],
                "max_training_jobs": job_config["ResourceLimits"].get("MaxNumberOfTrainingJobs"),
                "max_parallel_jobs": job_config["ResourceLimits"]["MaxParallelTrainingJobs"],
                "forecast": forecast,
                "instance_type": config.training_instance_type,
                # Every trial's width: its instances, its processes (None: the GPUs per instance are
                # counted by the container) and how its dataset reaches them.
                "instance_count": config.training_instance_count,
                "processes_per_job": scaling.processes(config.training_instance_type, config.training_instance_count),
                "input_mode": requests.training_input_mode(request["TrainingJobDefinition"]),
                "spot": config.use_spot,
                "tuned": sorted(r["Name"] for ranges in job_config["ParameterRanges"].values() for r in ranges),
            },
        )
    )
    return "tuning job created" if created else "tuning job already existed"


def audit_changed(svc: Services, event: ProcessingJobStateChange) -> str:
    """The audit job ended: blocking findings reject the run, the rest travel in ``dataset.audited``,
    and the tuning job starts."""
    if not event.name.endswith(names.AUDIT_JOB_SUFFIX):
        return f"ignored: {event.name} is not a droptrain audit job"
    if event.status not in TERMINAL:
        return f"ignored: audit status {event.status}"
    description = svc.sagemaker.describe_processing_job(event.name)
    tags = svc.sagemaker.list_tags(description["ProcessingJobArn"])
    if tags.get(names.TAG_ROLE) != "audit" or names.TAG_RUN_ID not in tags:
        return f"ignored: {event.name} is not a droptrain audit job"
    run, dataset_uri = tags[names.TAG_RUN_ID], names.dataset_of_tags(tags)
    if event.name.endswith(names.AUDIT_SHARDS_SUFFIX):
        return _shards_scanned(svc, event, description, tags)
    reports = requests.reports_uri(svc.config, run)
    audit = read_json(svc, f"runs/{run}/reports/audit.json") if event.status == "Completed" else None
    if not isinstance(audit, dict):
        reason = description.get("FailureReason") or event.failure_reason or "the audit job wrote no audit.json"
        return _reject(svc, run, dataset_uri, [f"the dataset audit failed: {reason}"], {"audit_job": event.name})
    evidence = {
        "audit": reports + "audit.json",
        "page": reports + "audit.html",
        "counts": audit.get("counts"),
        "leaked": audit.get("leaked", [])[:100],
        "duplicate_summary": audit.get("duplicate_summary"),
    }
    blocking = list(audit.get("blocking") or [])
    fixed = svc.config.audit_fix and bool(audit.get("leaked"))
    if fixed:  # AUDIT_FIX: leakage is mended (the held-out copies dropped), not a reason to stop
        blocking = [b for b, kind in zip(blocking, audit.get("blocking_kinds") or []) if kind != "leakage"]
    if blocking:
        return _reject(svc, run, dataset_uri, blocking, evidence)
    warnings = _warnings(audit)
    if fixed:
        warnings.insert(
            0,
            f"AUDIT_FIX: {len(audit['leaked'])} held-out image(s) duplicating other splits are dropped from valid/test",
        )
    detail = {
        **evidence,
        "warnings": warnings,
        "images": audit.get("images"),
        "imbalance_ratio": audit.get("imbalance_ratio"),
    }
    summary = f"{run} audited: {len(warnings)} warning(s)" + (f"; {warnings[0]}" if warnings else "")
    svc.notifier.send(
        Notification("dataset.audited", run, dataset_uri, "Audited", summary, job=event.name, detail=detail)
    )
    dataset = _dataset_ref(dataset_uri or description["ProcessingInputs"][0]["S3Input"]["S3Uri"])
    try:
        images, mended = int(audit.get("images") or 0), reports + "audit.json" if fixed else None
        request, forecast = _tuning_request(
            svc, run, dataset, images, _size(tags), audit.get("imbalance_ratio"), mended
        )
    except cost.BudgetError as exc:
        return _reject(svc, run, dataset.uri, [str(exc)], evidence)
    return _start_tuning(svc, run, dataset.uri, request, forecast)


def _shards_scanned(svc: Services, event: ProcessingJobStateChange, description: dict, tags: dict[str, str]) -> str:
    """The instances scanned their shares of the dataset: one more job audits them as a whole."""
    run, dataset_uri = tags[names.TAG_RUN_ID], names.dataset_of_tags(tags)
    if event.status != "Completed":
        reason = description.get("FailureReason") or event.failure_reason or f"the scan was {event.status.lower()}"
        return _reject(svc, run, dataset_uri, [f"the dataset audit failed: {reason}"], {"audit_job": event.name})
    ours = [{"Key": k, "Value": v} for k, v in sorted(tags.items()) if k.startswith("droptrain:")]
    request = audit_requests.audit_merge_request(svc.config, run, ours)
    created = svc.sagemaker.create_processing_job(request)
    return "audit merge job created" if created else "audit merge job already existed"


def _size(tags: dict[str, str]) -> int | None:
    """The dataset's size the upload's listing found (the audit job's tag), if it says."""
    value = tags.get(names.TAG_DATASET_BYTES, "")
    return int(value) if value.isdigit() else None


def _warnings(audit: dict) -> list[str]:
    """The audit's own lines (each finding kind once, with a few files); counted here for a report
    written before the audit told them."""
    if isinstance(audit.get("warnings"), list):
        return [str(w) for w in audit["warnings"]]
    out = []
    summary = audit.get("duplicate_summary") or {}
    out += [f"{n} {kind} duplicate pair(s)" for kind, n in sorted(summary.items())]
    for key, words in (
        ("unreadable", "unreadable file(s)"),
        ("not_rgb", "image(s) not in RGB"),
        ("tiny_images", "tiny image(s)"),
        ("extreme_aspect", "image(s) of extreme aspect ratio"),
        ("hidden_folders", "hidden folder(s) ignored"),
        ("class_name_twins", "class names differing only in case or spaces"),
    ):
        if audit.get(key):
            out.append(f"{len(audit[key])} {words}")
    ratio = audit.get("imbalance_ratio")
    if ratio and ratio > 10:
        out.append(f"classes imbalanced {ratio}:1")
    return out


def _reject(svc: Services, run: str, dataset_uri: str | None, reasons: list[str], detail: dict) -> str:
    svc.notifier.send(
        Notification(
            "dataset.rejected",
            run,
            dataset_uri,
            "Rejected",
            f"{run} rejected: {reasons[0]}",
            detail={"reasons": reasons, "checked": "audit", **detail},
        )
    )
    return f"rejected: {'; '.join(reasons)}"


def _dataset_ref(uri: str) -> names.DatasetRef:
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    name = prefix.rstrip("/").rsplit("/", 1)[-1]
    return names.DatasetRef(bucket, prefix, name, "folder" if prefix.endswith("/") else "archive", prefix)


def _prices(svc: Services) -> tuple[cost.Price | None, cost.Price | None]:
    """The training and hosting prices of the stage's instance types, where known."""
    if svc.prices is None:
        return None, None
    config = svc.config
    hosting = None if config.serverless else svc.prices.hourly(config.inference_instance_type, "Hosting")
    return svc.prices.hourly(config.training_instance_type, "Training"), hosting
