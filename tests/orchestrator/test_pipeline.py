"""The whole pipeline through the Chalice handlers, event by event, against moto (Stubber where moto falls short)."""

from __future__ import annotations

import datetime
import os
from collections import Counter

import pytest

from chalice_app import names
from orchestrator.conftest import BUCKET, invoke
from orchestrator.support import event

BEST = {"lr": "0.00074", "batch-size": "64", "epochs": "6", "weight-decay": "0.0002"}


def _tuning_description(
    stage, run: str, status: str = "Completed", best: dict | None = BEST, reason: str | None = None
) -> dict:
    """moto's real description of the job, with what only a real tuning job has."""
    described = stage.sagemaker.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=run)
    described.pop("ResponseMetadata")
    for key in (
        "BestTrainingJob",
        "OverallBestTrainingJob",
        "WarmStartConfig",
        "Autotune",
        "TuningJobCompletionDetails",
        "ConsumedResources",
        "FailureReason",
        "TrainingJobDefinitions",
    ):
        described.pop(key, None)
    described["HyperParameterTuningJobStatus"] = status
    if reason:
        described["FailureReason"] = reason
    if best is not None:
        now = datetime.datetime(2026, 11, 20, 19, 30, tzinfo=datetime.timezone.utc)
        described["BestTrainingJob"] = {
            "TrainingJobName": f"{run}-003-7d1e2a4b",
            "TrainingJobArn": f"arn:aws:sagemaker:us-east-1:123456789012:training-job/{run}-003-7d1e2a4b",
            "CreationTime": now,
            "TrainingJobStatus": "Completed",
            "TunedHyperParameters": best,
            "FinalHyperParameterTuningJobObjectiveMetric": {
                "Type": "Maximize",
                "MetricName": "valid:accuracy",
                "Value": 0.912,
            },
            "ObjectiveStatus": "Succeeded",
        }
    return described


def _tuning_event(run: str, dataset_uri: str, status: str = "Completed") -> dict:
    return event(
        "tuning-job-completed.json",
        HyperParameterTuningJobName=run,
        HyperParameterTuningJobStatus=status,
        HyperParameterTuningJobArn=f"arn:aws:sagemaker:us-east-1:123456789012:hyper-parameter-tuning-job/{run}",
        Tags={"droptrain:run-id": run, "droptrain:dataset": dataset_uri},
    )


def _training_event(run: str, status: str = "Completed") -> dict:
    return event(
        "training-job-completed.json",
        TrainingJobName=f"{run}-final",
        TrainingJobStatus=status,
        Tags={"droptrain:run-id": run, "droptrain:role": "final"},
    )


def _endpoint_name(run: str) -> str:
    return f"droptrain-dev-{names.project_of_run(run)}"


def _endpoint_event(run: str, status: str = "IN_SERVICE", endpoint: str | None = None) -> dict:
    return event(
        "endpoint-in-service.json",
        EndpointConfigName=run,
        EndpointStatus=status,
        Tags={"droptrain:run-id": run},
        EndpointName=endpoint or _endpoint_name(run),
    )


def package_event(stage, run: str) -> dict:
    """SageMaker's "Model Package State Change" for the version registered from ``run``, as it is now."""
    group = _endpoint_name(run)
    for summary in stage.sagemaker.list_model_packages(ModelPackageGroupName=group)["ModelPackageSummaryList"]:
        described = stage.sagemaker.describe_model_package(ModelPackageName=summary["ModelPackageArn"])
        if f"/runs/{run}/" in described["InferenceSpecification"]["Containers"][0]["ModelDataUrl"]:
            return event(
                "model-package-approved.json",
                ModelPackageGroupName=group,
                ModelPackageVersion=described["ModelPackageVersion"],
                ModelPackageArn=described["ModelPackageArn"],
                ModelApprovalStatus=described["ModelApprovalStatus"],
                InferenceSpecification={"Containers": described["InferenceSpecification"]["Containers"]},
                CustomerMetadataProperties={"droptrain:run-id": run},
            )
    raise AssertionError(f"no version of {group} from {run}")


def _register_and_deploy(stage, client, run: str) -> str:
    """The final job's end registers the version (the gate approves a first one); its approval event deploys it."""
    assert invoke(client, "on_training_job_state_change", _training_event(run)).startswith("registered as version")
    return invoke(client, "on_model_package_state_change", package_event(stage, run))


def _run_to_tuning(stage, client, name="pets", marker: bytes = b""):
    s3_event = stage.upload_folder(name, marker=marker)
    assert invoke(client, "on_dataset_uploaded", s3_event) == "tuning job created"
    run = names.run_id(
        names.parse_dataset_key(BUCKET, f"datasets/{name}/_READY", "datasets/"), s3_event["detail"]["object"]["etag"]
    )
    return s3_event, run


def _complete_tuning(stage, client, run, dataset_uri):
    stage.stub.add_response(
        "describe_hyper_parameter_tuning_job", _tuning_description(stage, run), {"HyperParameterTuningJobName": run}
    )
    return invoke(client, "on_tuning_job_state_change", _tuning_event(run, dataset_uri))


def test_a_tuning_event_with_empty_tags_reads_the_jobs_own(stage, client):
    """AWS's documented example of the tuning job's event carries "Tags": {}: the job's tags decide."""
    _, run = _run_to_tuning(stage, client)
    stage.notifications()
    stage.stub.add_response(
        "describe_hyper_parameter_tuning_job", _tuning_description(stage, run), {"HyperParameterTuningJobName": run}
    )
    untagged = _tuning_event(run, "s3://unused/")
    untagged["detail"]["Tags"] = {}
    assert invoke(client, "on_tuning_job_state_change", untagged) == "final training job created"
    assert [n["event"] for n in stage.notifications()] == ["tuning.completed", "training.started"]


def test_happy_path_event_by_event(stage, client):
    s3_event, run = _run_to_tuning(stage, client)
    dataset_uri = f"s3://{BUCKET}/datasets/pets/"
    job = stage.sagemaker.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=run)
    assert job["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]["MetricName"] == "valid:accuracy"
    tags = stage.sagemaker.list_tags(ResourceArn=job["HyperParameterTuningJobArn"])["Tags"]
    assert {t["Key"]: t["Value"] for t in tags} == {
        "droptrain:run-id": run,
        "droptrain:dataset": dataset_uri,
        "droptrain:role": "tuning",
    }
    notes = stage.notifications()
    assert [n["event"] for n in notes] == ["dataset.accepted", "tuning.started"]
    accepted = notes[0]
    assert (
        accepted["run_id"] == run
        and accepted["dataset"] == dataset_uri
        and accepted["attributes"] == {"event": "dataset.accepted"}
    )
    assert accepted["detail"]["classes"] == ["beagle", "corgi", "pug"] and accepted["detail"]["images"] == 27
    assert set(accepted) >= {"event", "run_id", "dataset", "status", "job", "time", "detail", "subject"}
    assert len(accepted["subject"]) <= 100 and "\n" not in accepted["subject"]
    datetime.datetime.fromisoformat(accepted["time"].replace("Z", "+00:00"))

    assert _complete_tuning(stage, client, run, dataset_uri) == "final training job created"
    final = stage.sagemaker.describe_training_job(TrainingJobName=f"{run}-final")
    for key, value in BEST.items():
        assert final["HyperParameters"][key] == value
    assert final["HyperParameters"]["sagemaker_program"] == "train.py"
    assert final["HyperParameters"]["debug-out"] == "/opt/ml/output/data/debug"
    final_tags = {t["Key"]: t["Value"] for t in stage.sagemaker.list_tags(ResourceArn=final["TrainingJobArn"])["Tags"]}
    assert final_tags["droptrain:role"] == "final" and final_tags["droptrain:run-id"] == run
    notes = stage.notifications()
    assert [n["event"] for n in notes] == ["tuning.completed", "training.started"]
    assert notes[0]["detail"]["best_hyperparameters"] == BEST and notes[0]["detail"]["objective"]["Value"] == 0.912

    assert (
        invoke(client, "on_training_job_state_change", _training_event(run))
        == "registered as version 1; approved by the gate"
    )
    notes = stage.notifications()
    assert [n["event"] for n in notes] == ["training.completed", "model.registered"]
    assert notes[0]["detail"]["model_artifact"].endswith("model.tar.gz")
    assert notes[0]["detail"]["reports"] == f"s3://{BUCKET}/runs/{run}/reports/"
    assert notes[1]["detail"]["model_package_group"] == "droptrain-dev-pets" and notes[1]["detail"]["version"] == 1
    package = stage.sagemaker.describe_model_package(ModelPackageName=notes[1]["detail"]["model_package_arn"])
    assert package["ModelApprovalStatus"] == "Approved" and "first version" in package["ApprovalDescription"]
    assert (
        package["InferenceSpecification"]["Containers"][0]["ModelDataUrl"]
        == final["ModelArtifacts"]["S3ModelArtifacts"]
    )

    assert (
        invoke(client, "on_model_package_state_change", package_event(stage, run))
        == "deployment: creating the endpoint"
    )
    model = stage.sagemaker.describe_model(ModelName=run)
    assert model["PrimaryContainer"]["ModelDataUrl"] == final["ModelArtifacts"]["S3ModelArtifacts"]
    assert model["PrimaryContainer"]["Image"] == os.environ["INFERENCE_IMAGE_URI"]
    endpoint = stage.sagemaker.describe_endpoint(EndpointName="droptrain-dev-pets")
    assert endpoint["EndpointConfigName"] == run
    notes = stage.notifications()
    assert [n["event"] for n in notes] == ["model.approved", "deployment.started"]
    assert notes[1]["detail"]["alarms"] == ["droptrain-dev-pets-5xx-rate", "droptrain-dev-pets-model-latency"]
    alarms = stage.cloudwatch.describe_alarms(AlarmNamePrefix="droptrain-dev-pets-")["MetricAlarms"]
    assert sorted(a["AlarmName"] for a in alarms) == ["droptrain-dev-pets-5xx-rate", "droptrain-dev-pets-model-latency"]

    assert invoke(client, "on_endpoint_state_change", _endpoint_event(run)) == "deployment completed"
    notes = stage.notifications()
    assert [n["event"] for n in notes] == ["deployment.completed"]
    assert notes[0]["run_id"] == run and notes[0]["detail"]["endpoint"] == "droptrain-dev-pets"

    status = client.http.get("/status")
    assert status.status_code == 200
    pets = status.json_body["projects"]["pets"]
    assert pets["endpoint"] == {"name": "droptrain-dev-pets", "status": "InService", "failure_reason": None}
    assert pets["model"]["run_id"] == run


def test_every_event_delivered_twice_and_out_of_order(stage, client):
    s3_event, run = _run_to_tuning(stage, client)
    dataset_uri = f"s3://{BUCKET}/datasets/pets/"
    assert invoke(client, "on_dataset_uploaded", s3_event) in ("tuning job created", "tuning job already existed")
    for _ in range(2):
        _complete_tuning(stage, client, run, dataset_uri)
    # The endpoint's IN_SERVICE arrives before the training job's Completed is handled a second time.
    invoke(client, "on_training_job_state_change", _training_event(run))
    approved = package_event(stage, run)
    invoke(client, "on_model_package_state_change", approved)
    invoke(client, "on_endpoint_state_change", _endpoint_event(run))
    invoke(client, "on_training_job_state_change", _training_event(run))
    invoke(client, "on_model_package_state_change", approved)
    invoke(client, "on_endpoint_state_change", _endpoint_event(run))
    invoke(client, "on_dataset_uploaded", s3_event)

    counts = Counter(n["event"] for n in stage.notifications())
    assert counts == {
        e: 1
        for e in (
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
    }
    assert (
        len(stage.sagemaker.list_model_packages(ModelPackageGroupName="droptrain-dev-pets")["ModelPackageSummaryList"])
        == 1
    )
    assert len(stage.sagemaker.list_hyper_parameter_tuning_jobs()["HyperParameterTuningJobSummaries"]) == 1
    assert [j["TrainingJobName"] for j in stage.sagemaker.list_training_jobs()["TrainingJobSummaries"]] == [
        f"{run}-final"
    ]
    assert len(stage.sagemaker.list_endpoints()["Endpoints"]) == 1
    assert len(stage.sagemaker.list_models()["Models"]) == 1


def test_already_exists_from_sagemaker_is_success(stage, client):
    """Real SageMaker answers duplicates with errors (moto does not): those are success too."""
    stage.route("create_hyper_parameter_tuning_job")
    stage.stub.add_client_error(
        "create_hyper_parameter_tuning_job",
        "ResourceInUse",
        "Tuning job names must be unique within an AWS account and region",
    )
    s3_event = stage.upload_folder("pets")
    assert invoke(client, "on_dataset_uploaded", s3_event) == "tuning job already existed"
    assert [n["event"] for n in stage.notifications()] == ["dataset.accepted", "tuning.started"]


def test_second_run_updates_the_endpoint_blue_green(stage, client):
    _, first = _run_to_tuning(stage, client, "pets")
    _complete_tuning(stage, client, first, f"s3://{BUCKET}/datasets/pets/")
    _register_and_deploy(stage, client, first)
    stage.notifications()
    _, second = _run_to_tuning(stage, client, "pets", marker=b"again")
    assert second != first
    _complete_tuning(stage, client, second, f"s3://{BUCKET}/datasets/pets/")
    final = stage.sagemaker.describe_training_job(TrainingJobName=f"{second}-final")
    baseline = [c for c in final["InputDataConfig"] if c["ChannelName"] == "baseline"]
    first_model = stage.sagemaker.describe_training_job(TrainingJobName=f"{first}-final")["ModelArtifacts"][
        "S3ModelArtifacts"
    ]
    assert baseline[0]["DataSource"]["S3DataSource"]["S3Uri"] == first_model, (
        "the serving model is evaluated beside the new one"
    )
    put_evaluations(
        stage,
        second,
        {"beagle": 0.9, "corgi": 0.9, "pug": 0.9},
        baseline_run=first,
        baseline={"beagle": 0.9, "corgi": 0.9, "pug": 0.9},
    )
    assert (
        invoke(client, "on_training_job_state_change", _training_event(second))
        == "registered as version 2; approved by the gate"
    )
    stage.stub.add_response(
        "update_endpoint",
        {"EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/droptrain-dev-pets"},
        {
            "EndpointName": "droptrain-dev-pets",
            "EndpointConfigName": second,
            "DeploymentConfig": {
                "BlueGreenUpdatePolicy": {
                    "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 600},
                    "TerminationWaitInSeconds": 120,
                    "MaximumExecutionTimeoutInSeconds": 3000,
                },
                "AutoRollbackConfiguration": {
                    "Alarms": [
                        {"AlarmName": "droptrain-dev-pets-5xx-rate"},
                        {"AlarmName": "droptrain-dev-pets-model-latency"},
                    ]
                },
            },
        },
    )
    outcome = invoke(client, "on_model_package_state_change", package_event(stage, second))
    assert outcome == "deployment: updating the endpoint (blue/green, all at once, baking 600s under alarms)"
    stage.stub.assert_no_pending_responses()
    endpoint_arn = stage.sagemaker.describe_endpoint(EndpointName="droptrain-dev-pets")["EndpointArn"]
    tags = {t["Key"]: t["Value"] for t in stage.sagemaker.list_tags(ResourceArn=endpoint_arn)["Tags"]}
    assert tags["droptrain:run-id"] == second and tags["droptrain:dataset"] == f"s3://{BUCKET}/datasets/pets/"


def put_evaluations(
    stage,
    run: str,
    recalls: dict[str, float],
    baseline_run: str | None = None,
    baseline: dict[str, float] | None = None,
) -> None:
    """The final job's evaluation.json (as train.py writes it) in the run's reports."""
    import json as _json

    def report(values: dict[str, float]) -> dict:
        f1 = sum(values.values()) / len(values)
        return {
            "classes": sorted(values),
            "split": "test",
            "accuracy": f1,
            "per_class": {c: {"precision": r, "recall": r, "f1": r, "support": 3} for c, r in values.items()},
            "macro_avg": {"precision": f1, "recall": f1, "f1": f1},
        }

    evaluation = report(recalls)
    if baseline_run:
        evaluation["baseline"] = {"run_id": baseline_run, "classes_match": True, **report(baseline)}
    stage.put(f"runs/{run}/reports/evaluation.json", _json.dumps(evaluation).encode())


def test_ignored_events(stage, client):
    assert invoke(client, "on_training_job_state_change", event("training-job-tuning-child.json")).startswith("ignored")
    assert invoke(
        client, "on_dataset_uploaded", event("s3-object-created.json", bucket={"name": "someone-else"})
    ).startswith("ignored")
    assert invoke(
        client,
        "on_dataset_uploaded",
        event("s3-object-created.json", object={"key": "datasets/dogs/train/a/1.jpg", "etag": "x"}),
    ).startswith("ignored")
    assert invoke(
        client, "on_endpoint_state_change", event("endpoint-in-service.json", EndpointName="other")
    ).startswith("ignored")
    assert invoke(
        client, "on_endpoint_state_change", event("endpoint-in-service.json", EndpointStatus="UPDATING")
    ).startswith("ignored")
    # A tuning job that is not droptrain's: its event has no tags, and neither has the job itself.
    untagged = event("tuning-job-completed.json", Tags={})
    foreign = untagged["detail"]["HyperParameterTuningJobArn"]
    stage.route("list_tags")
    stage.stub.add_response(
        "describe_hyper_parameter_tuning_job",
        {
            "HyperParameterTuningJobName": untagged["detail"]["HyperParameterTuningJobName"],
            "HyperParameterTuningJobArn": foreign,
            "HyperParameterTuningJobConfig": {
                "Strategy": "Bayesian",
                "ResourceLimits": {"MaxNumberOfTrainingJobs": 2, "MaxParallelTrainingJobs": 1},
            },
            "HyperParameterTuningJobStatus": "Completed",
            "CreationTime": datetime.datetime(2026, 11, 20, tzinfo=datetime.timezone.utc),
            "TrainingJobStatusCounters": {},
            "ObjectiveStatusCounters": {},
        },
    )
    stage.stub.add_response("list_tags", {"Tags": []}, {"ResourceArn": foreign})
    assert invoke(client, "on_tuning_job_state_change", untagged).startswith("ignored")
    stage.stub.assert_no_pending_responses()
    assert stage.notifications() == []
    assert stage.sagemaker.list_hyper_parameter_tuning_jobs()["HyperParameterTuningJobSummaries"] == []


def test_malformed_event_is_dropped_with_a_clear_log(stage, client, capsys):
    broken = event("s3-object-created.json")
    del broken["detail"]["bucket"]
    assert invoke(client, "on_dataset_uploaded", broken).startswith("malformed: event has no detail.bucket.name")
    assert stage.notifications() == []


# -- rejected datasets ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "setup,reason",
    [
        (lambda st: st.upload_folder("one", classes=("beagle",)), "at least 2 classes; found 1 (beagle)"),
        (
            lambda st: (st.put("datasets/empty/valid/pug/notes.txt"), st.upload_folder("empty", splits=("train",)))[1],
            "the valid split has no JPEG or PNG images",
        ),
        (lambda st: st.upload_folder("nothing", classes=()), "found 0"),
    ],
)
def test_rejected_folder_datasets(stage, client, setup, reason):
    assert invoke(client, "on_dataset_uploaded", setup(stage)).startswith("rejected")
    notes = stage.notifications()
    assert [n["event"] for n in notes] == ["dataset.rejected"]
    assert reason in notes[0]["subject"] or any(reason in r for r in notes[0]["detail"]["reasons"])
    assert stage.sagemaker.list_hyper_parameter_tuning_jobs()["HyperParameterTuningJobSummaries"] == []


def test_zip_dataset_checked_through_its_central_directory(stage, client):
    members = {f"dogs/{cls}/{i}.jpg": b"\xff\xd8\xff data" for cls in ("beagle", "pug") for i in range(4)}
    assert invoke(client, "on_dataset_uploaded", stage.upload_zip("dogs", members)) == "tuning job created"
    accepted = stage.notifications()[0]
    assert (
        accepted["detail"]["classes"] == ["beagle", "pug"] and accepted["detail"]["checked"] == "zip central directory"
    )
    assert accepted["dataset"] == f"s3://{BUCKET}/datasets/dogs.zip"


@pytest.mark.parametrize(
    "members,reason",
    [
        ({"../escape/a/1.jpg": b"x", "b/1.jpg": b"x", "c/1.jpg": b"x"}, "unsafe members"),
        ({"dogs/beagle/1.jpg": b"x"}, "at least 2 classes"),
    ],
)
def test_rejected_zip_datasets(stage, client, members, reason):
    assert invoke(client, "on_dataset_uploaded", stage.upload_zip("bad", members)).startswith("rejected")
    assert reason in stage.notifications()[0]["subject"]


def test_corrupt_archives_rejected(stage, client):
    etag = stage.put("datasets/junk.zip", b"PK\x03\x04 this is not a zip")
    assert invoke(
        client,
        "on_dataset_uploaded",
        event("s3-object-created.json", object={"key": "datasets/junk.zip", "size": 27, "etag": etag}),
    ).startswith("rejected")
    etag = stage.put("datasets/junk.tar.gz", b"plain text, not gzip")
    assert invoke(
        client,
        "on_dataset_uploaded",
        event("s3-object-created.json", object={"key": "datasets/junk.tar.gz", "size": 20, "etag": etag}),
    ).startswith("rejected")
    subjects = [n["subject"] for n in stage.notifications()]
    assert "not a readable zip" in subjects[0] and "not gzip" in subjects[1]


def test_zip_validation_reads_only_the_central_directory(stage):
    import io
    import zipfile

    from chalice_app import validation

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as zf:
        for cls in ("a", "b"):
            for i in range(20):
                zf.writestr(f"{cls}/{i}.jpg", bytes(50_000))
    stage.put("datasets/big.zip", buffer.getvalue())
    reads = []
    adapter = stage.services.s3
    original = adapter.read_range
    adapter.read_range = lambda b, k, s, e: reads.append(e - s + 1) or original(b, k, s, e)
    ref = names.parse_dataset_key(BUCKET, "datasets/big.zip", "datasets/")
    report = validation.check_archive(adapter, ref, len(buffer.getvalue()))
    assert report.ok and report.classes == ["a", "b"]
    assert len(reads) <= 4 and sum(reads) < len(buffer.getvalue()) / 100


# -- failures ---------------------------------------------------------------------------------


def _trial(run: str, number: int, status: str, reason: str | None = None) -> dict:
    name = f"{run}-{number:03d}-0000000{number}"
    summary = {
        "TrainingJobName": name,
        "TrainingJobArn": f"arn:aws:sagemaker:us-east-1:123456789012:training-job/{name}",
        "TuningJobName": run,
        "CreationTime": datetime.datetime(2026, 11, 20, 19, number, tzinfo=datetime.timezone.utc),
        "TrainingJobStatus": status,
        "TunedHyperParameters": {"lr": "0.01"},
    }
    if reason:
        summary["FailureReason"] = reason
    return summary


def _list_trials(stage, run: str, *trials: dict) -> None:
    """Two pages, as a tuning job with many trials answers."""
    half = len(trials) // 2
    stage.stub.add_response(
        "list_training_jobs_for_hyper_parameter_tuning_job",
        {"TrainingJobSummaries": list(trials[:half]), "NextToken": "page-2"},
        {"HyperParameterTuningJobName": run, "MaxResults": 100},
    )
    stage.stub.add_response(
        "list_training_jobs_for_hyper_parameter_tuning_job",
        {"TrainingJobSummaries": list(trials[half:])},
        {"HyperParameterTuningJobName": run, "MaxResults": 100, "NextToken": "page-2"},
    )


@pytest.mark.parametrize("status,reason", [("Failed", "ResourceLimitExceeded: the account's limit"), ("Stopped", None)])
def test_tuning_failed_or_stopped(stage, client, status, reason):
    _, run = _run_to_tuning(stage, client)
    stage.notifications()
    stage.stub.add_response(
        "describe_hyper_parameter_tuning_job", _tuning_description(stage, run, status, best=None, reason=reason)
    )
    _list_trials(stage, run, _trial(run, 1, "Stopped"))
    assert (
        invoke(client, "on_tuning_job_state_change", _tuning_event(run, "s3://x/", status))
        == f"tuning {status.lower()}"
    )
    notes = stage.notifications()
    assert [n["event"] for n in notes] == ["tuning.failed"]
    assert notes[0]["detail"]["reason"] == (reason or "the tuning job was stopped")
    assert stage.sagemaker.list_training_jobs()["TrainingJobSummaries"] == []


def test_tuning_failed_says_why_its_trials_failed(stage, client):
    _, run = _run_to_tuning(stage, client)
    stage.notifications()
    described = _tuning_description(stage, run, best=None)
    described["TrainingJobStatusCounters"] = {
        "Completed": 0,
        "InProgress": 0,
        "RetryableError": 0,
        "NonRetryableError": 3,
        "Stopped": 1,
    }
    stage.stub.add_response("describe_hyper_parameter_tuning_job", described)
    no_images = "AlgorithmError: DatasetError: no readable training images: beagle"
    _list_trials(
        stage,
        run,
        _trial(run, 1, "Failed", no_images),
        _trial(run, 2, "Stopped"),
        _trial(run, 3, "Failed", "AlgorithmError: DivergedError: the training loss became NaN"),
        _trial(run, 4, "Failed", no_images),
    )
    assert (
        invoke(client, "on_tuning_job_state_change", _tuning_event(run, "s3://x/")) == "tuning had no successful trial"
    )
    (note,) = stage.notifications()
    assert note["event"] == "tuning.failed" and note["subject"].startswith(
        f"droptrain tuning.failed: tuning {run} had no successful trial: AlgorithmError"
    )
    assert note["detail"]["trial_failures"] == [
        {"reason": no_images, "trials": [f"{run}-001-00000001", f"{run}-004-00000004"]},
        {"reason": "AlgorithmError: DivergedError: the training loss became NaN", "trials": [f"{run}-003-00000003"]},
    ]
    assert note["detail"]["reason"] == no_images + " (and 1 other reasons, in detail.trial_failures)"
    stage.stub.assert_no_pending_responses()


def _trial_event(run: str, status: str, reason: str | None) -> dict:
    out = event(
        "training-job-tuning-child.json",
        TrainingJobName=f"{run}-001-00000001",
        TrainingJobStatus=status,
        TuningJobArn=f"arn:aws:sagemaker:us-east-1:123456789012:hyper-parameter-tuning-job/{run}",
    )
    if reason:
        out["detail"]["FailureReason"] = reason
    return out


def test_a_trial_failing_on_the_dataset_stops_its_tuning_job(stage, client):
    _, run = _run_to_tuning(stage, client)
    stage.stub.add_response("stop_hyper_parameter_tuning_job", {}, {"HyperParameterTuningJobName": run})
    outcome = invoke(
        client,
        "on_training_job_state_change",
        _trial_event(
            run, "Failed", "AlgorithmError: ArchiveError: archive member '../x' escapes the extraction directory"
        ),
    )
    assert outcome.startswith(f"stopped tuning job {run}: every trial would fail: AlgorithmError: ArchiveError")
    stage.stub.assert_no_pending_responses()


@pytest.mark.parametrize(
    "status, reason",
    [("Failed", "AlgorithmError: DivergedError: the training loss became NaN"), ("Completed", None), ("Stopped", None)],
)
def test_other_trial_endings_leave_the_tuning_job_running(stage, client, status, reason):
    _, run = _run_to_tuning(stage, client)
    assert invoke(client, "on_training_job_state_change", _trial_event(run, status, reason)).startswith(
        "ignored: trial"
    )
    stage.stub.assert_no_pending_responses()


def test_a_tuning_job_that_ended_already_is_not_stopped_twice(stage, client):
    _, run = _run_to_tuning(stage, client)
    stage.stub.add_client_error(
        "stop_hyper_parameter_tuning_job",
        "ValidationException",
        "The request was rejected because the tuning job is in status Stopped.",
    )
    stage.stub.add_response(
        "describe_hyper_parameter_tuning_job", _tuning_description(stage, run, "Stopped", best=None)
    )
    outcome = invoke(
        client,
        "on_training_job_state_change",
        _trial_event(run, "Failed", "AlgorithmError: DatasetError: found 0 classes"),
    )
    assert outcome.startswith(f"already ended: tuning job {run}")


def _no_network_reason() -> str:
    """What SageMaker reports when AWS's toolkit cannot pip-install requirements.txt: its own error class."""
    from sagemaker_training import errors

    pip = ["/usr/local/bin/python3.12", "-m", "pip", "install", "-r", "requirements.txt"]
    output = (
        b"WARNING: Retrying (Retry(total=4, connect=None, read=None, redirect=None, status=None)) after connection "
        b"broken by 'NewConnectionError: Failed to establish a new connection: [Errno 101] Network is unreachable'\n"
        b"ERROR: Could not find a version that satisfies the requirement smdebug==1.0.34 (from versions: none)"
    )
    return "AlgorithmError: " + str(errors.InstallRequirementsError(pip, 1, output))


@pytest.mark.parametrize(
    "failure, said",
    [
        ("AlgorithmError: the training loss became NaN", "AlgorithmError: the training loss became NaN"),
        (_no_network_reason(), "the job could not pip-install training/requirements.txt: it cannot reach PyPI"),
    ],
)
def test_training_failed_leaves_the_endpoint(stage, client, failure, said):
    _, run = _run_to_tuning(stage, client)
    _complete_tuning(stage, client, run, f"s3://{BUCKET}/datasets/pets/")
    stage.notifications()
    described = stage.sagemaker.describe_training_job(TrainingJobName=f"{run}-final")
    described.pop("ResponseMetadata")
    failed = {
        k: v
        for k, v in described.items()
        if k
        in (
            "TrainingJobName",
            "TrainingJobArn",
            "AlgorithmSpecification",
            "CreationTime",
            "InputDataConfig",
            "HyperParameters",
            "RoleArn",
        )
    }
    failed.update(
        TrainingJobStatus="Failed",
        SecondaryStatus="Failed",
        FailureReason=failure,
        ModelArtifacts={"S3ModelArtifacts": ""},
        ResourceConfig=described["ResourceConfig"],
        StoppingCondition=described["StoppingCondition"],
    )
    stage.route("describe_training_job")
    stage.stub.add_response("describe_training_job", failed)
    assert invoke(client, "on_training_job_state_change", _training_event(run, "Failed")) == "training failed"
    notes = stage.notifications()
    assert [n["event"] for n in notes] == ["training.failed"]
    assert notes[0]["detail"]["reason"].startswith(said), "the cause, in its first words"
    assert "\n" not in notes[0]["detail"]["reason"], "one line"
    assert stage.sagemaker.list_endpoints()["Endpoints"] == [] and stage.sagemaker.list_models()["Models"] == []


def _endpoint_description(
    run: str, status: str, reason: str | None = None, endpoint: str = "droptrain-dev-pets"
) -> dict:
    now = datetime.datetime(2026, 11, 20, 20, 44, tzinfo=datetime.timezone.utc)
    described = {
        "EndpointName": endpoint,
        "EndpointArn": f"arn:aws:sagemaker:us-east-1:123456789012:endpoint/{endpoint}",
        "EndpointConfigName": run,
        "EndpointStatus": status,
        "CreationTime": now,
        "LastModifiedTime": now,
    }
    if reason:
        described["FailureReason"] = reason
    return described


def test_endpoint_failed(stage, client):
    stage.route("describe_endpoint", "list_tags")
    stage.stub.add_response(
        "describe_endpoint",
        _endpoint_description("dogs-3f9a1c2e", "Failed", "The primary container did not pass the ping health check"),
    )
    stage.stub.add_response("list_tags", {"Tags": [{"Key": "droptrain:run-id", "Value": "dogs-3f9a1c2e"}]})
    assert invoke(client, "on_endpoint_state_change", _endpoint_event("dogs-3f9a1c2e", "FAILED")) == "deployment failed"
    notes = stage.notifications()
    assert [n["event"] for n in notes] == ["deployment.failed"] and "ping health check" in notes[0]["detail"]["reason"]


def test_update_rolled_back_is_a_failed_deployment(stage, client):
    stage.route("describe_endpoint", "list_tags")
    stage.stub.add_response(
        "describe_endpoint",
        _endpoint_description("old-run-11111111", "InService", "Deployment rolled back: alarm droptrain-5xx"),
    )
    stage.stub.add_response("list_tags", {"Tags": [{"Key": "droptrain:run-id", "Value": "new-run-22222222"}]})
    assert invoke(client, "on_endpoint_state_change", _endpoint_event("old-run-11111111")) == "deployment failed"
    note = stage.notifications()[0]
    assert note["event"] == "deployment.failed" and note["run_id"] == "new-run-22222222"
    assert note["detail"]["serving"] == "old-run-11111111"


def test_deployment_queued_while_the_endpoint_updates(stage, client):
    _, run = _run_to_tuning(stage, client)
    _complete_tuning(stage, client, run, f"s3://{BUCKET}/datasets/pets/")
    assert invoke(client, "on_training_job_state_change", _training_event(run)).startswith("registered as version 1")
    approved = package_event(stage, run)
    stage.route("describe_endpoint", "add_tags", "list_tags", "delete_tags")
    stage.stub.add_response("describe_endpoint", _endpoint_description("old-run-11111111", "Updating"))
    stage.stub.add_response(
        "add_tags",
        {"Tags": []},
        {
            "ResourceArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/droptrain-dev-pets",
            "Tags": [
                {"Key": "droptrain:pending-run-id", "Value": run},
                {"Key": "droptrain:pending-dataset", "Value": f"s3://{BUCKET}/datasets/pets/"},
            ],
        },
    )
    assert invoke(client, "on_model_package_state_change", approved).startswith("deployment: queued")
    # The endpoint finishes its update: the queued run is deployed next.
    stage.stub.add_response("describe_endpoint", _endpoint_description("old-run-11111111", "InService"))
    stage.stub.add_response(
        "list_tags",
        {
            "Tags": [
                {"Key": "droptrain:run-id", "Value": "old-run-11111111"},
                {"Key": "droptrain:pending-run-id", "Value": run},
            ]
        },
    )
    stage.stub.add_response(
        "update_endpoint", {"EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/droptrain-dev"}
    )
    stage.stub.add_response("add_tags", {"Tags": []})
    stage.stub.add_response("delete_tags", {})
    outcome = invoke(
        client, "on_endpoint_state_change", _endpoint_event("old-run-11111111", endpoint="droptrain-dev-pets")
    )
    assert outcome == f"deployment completed; deploying queued run {run}"
    stage.stub.assert_no_pending_responses()


def test_missing_configuration(stage, monkeypatch, tmp_path):
    from orchestrator.conftest import make_client

    monkeypatch.delenv("SAGEMAKER_ROLE_ARN")
    client = make_client(tmp_path)  # the app builds AWS's adapters from the environment, as on Lambda
    assert invoke(client, "on_dataset_uploaded", stage.upload_folder("pets")).startswith(
        "configuration error: configuration variable SAGEMAKER_ROLE_ARN is not set"
    )
    notes = stage.notifications()
    assert [n["event"] for n in notes] == ["pipeline.failed"] and notes[0]["detail"]["variable"] == "SAGEMAKER_ROLE_ARN"
    assert stage.sagemaker.list_hyper_parameter_tuning_jobs()["HyperParameterTuningJobSummaries"] == []
    broken = client.http.post("/predict", headers={"Content-Type": "image/jpeg"}, body=b"\xff\xd8\xff\xe0")
    assert broken.status_code == 503 and broken.json_body["error"]["code"] == "misconfigured"


def test_permanent_aws_failure_reported_once(stage, client):
    stage.route("create_hyper_parameter_tuning_job")
    for _ in range(2):
        stage.stub.add_client_error(
            "create_hyper_parameter_tuning_job", "ValidationException", "The role cannot be assumed by SageMaker"
        )
    s3_event = stage.upload_folder("pets")
    for _ in range(2):
        assert invoke(client, "on_dataset_uploaded", s3_event).startswith("failed: creating tuning job")
    events = [n["event"] for n in stage.notifications()]
    assert events.count("pipeline.failed") == 1 and "tuning.started" not in events


def test_throttled_aws_call_is_retried_by_lambda(stage, client):
    stage.route("create_hyper_parameter_tuning_job")
    stage.stub.add_client_error(
        "create_hyper_parameter_tuning_job", "ThrottlingException", "Rate exceeded", http_status_code=400
    )
    s3_event = stage.upload_folder("pets")
    with pytest.raises(Exception, match="Rate exceeded"):
        invoke(client, "on_dataset_uploaded", s3_event)
    notes = stage.notifications()
    assert [n["event"] for n in notes] == ["dataset.accepted", "pipeline.failed"]
    assert notes[1]["detail"]["retrying"] is True


def test_logs_carry_the_event_id_as_correlation_id(stage, client):
    import io
    import json as _json

    from chalice_app import observability

    logger = observability.logger()
    # The logger is made once per process; an earlier test may have made it under another level.
    level = logger.log_level
    logger.setLevel("INFO")
    handler = logger.registered_handler
    buffer = io.StringIO()
    # Not setStream: it flushes the previous stream, which may be an earlier test's, now closed.
    previous, handler.stream = handler.stream, buffer
    try:
        s3_event = stage.upload_folder("pets")
        invoke(client, "on_dataset_uploaded", s3_event)
    finally:
        handler.stream = previous
        logger.setLevel(level)
    records = [_json.loads(line) for line in buffer.getvalue().splitlines() if line.startswith("{")]
    outcome = [r for r in records if r.get("message", "").startswith("dataset_uploaded:")]
    assert outcome and outcome[-1]["correlation_id"] == s3_event["id"] and outcome[-1]["service"] == "droptrain"


@pytest.mark.parametrize("block", [False, True])
def test_rule_verdicts_reach_the_notification_and_can_block_deployment(stage, client, block):
    import json as _json

    stage.services.config = __import__("dataclasses").replace(stage.services.config, block_on_rule_issues=block)
    _, run = _run_to_tuning(stage, client)
    _complete_tuning(stage, client, run, f"s3://{BUCKET}/datasets/pets/")
    stage.notifications()
    verdicts = [
        {"rule": "Overfit", "status": "IssuesFound", "step": 15, "message": "validation loss exceeded training loss"},
        {"rule": "VanishingGradient", "status": "NoIssuesFound", "step": None, "message": "ok"},
    ]
    stage.put(f"runs/{run}/reports/rules.json", _json.dumps(verdicts).encode())
    outcome = invoke(client, "on_training_job_state_change", _training_event(run))
    note = stage.notifications()[0]
    assert note["event"] == "training.completed"
    assert note["detail"]["rules"] == verdicts and note["detail"]["rule_issues"] == ["Overfit"]
    assert note["detail"]["report"] == f"s3://{BUCKET}/runs/{run}/reports/report.html"
    assert "rule issues: Overfit" in note["subject"]
    if block:
        assert outcome.startswith("not registered") and stage.sagemaker.list_endpoints()["Endpoints"] == []
        assert stage.sagemaker.list_model_package_groups()["ModelPackageGroupSummaryList"] == []
    else:
        assert outcome == "registered as version 1; approved by the gate"


def test_a_failed_endpoint_is_deleted_and_created_again_once_gone_without_waiting(stage, client):
    """SageMaker cannot update an endpoint in Failed state: it is deleted, the run is remembered, and the
    endpoint's deletion event (retried by Lambda until it is gone) creates it. No handler waits inline:
    the API's Lambda has 28 s, a deletion a minute or more."""
    from chalice_app.adapters.errors import AdapterError

    _, run = _run_to_tuning(stage, client)
    _complete_tuning(stage, client, run, f"s3://{BUCKET}/datasets/pets/")
    assert invoke(client, "on_training_job_state_change", _training_event(run)).startswith("registered as version 1")
    approved = package_event(stage, run)
    stage.route("describe_endpoint", "delete_endpoint", "create_endpoint")
    stage.stub.add_response(
        "describe_endpoint", _endpoint_description("old-run-11111111", "Failed", "ping health check")
    )
    stage.stub.add_response("delete_endpoint", {}, {"EndpointName": "droptrain-dev-pets"})
    stage.stub.add_response("describe_endpoint", _endpoint_description("old-run-11111111", "Deleting"))
    assert invoke(client, "on_model_package_state_change", approved) == (
        "deployment: recreating the endpoint, which had failed: it is created again as soon as its deletion ends"
    )
    stage.stub.assert_no_pending_responses()
    assert stage.sleeps == [], "nothing waited for the deletion"
    started = [n for n in stage.notifications() if n["event"] == "deployment.started"]
    assert started and "recreating" in started[0]["detail"]["action"]

    deleting = _endpoint_event("old-run-11111111", "DELETING", endpoint="droptrain-dev-pets")
    stage.stub.add_response("describe_endpoint", _endpoint_description("old-run-11111111", "Deleting"))
    with pytest.raises(AdapterError, match="still being deleted"):  # Lambda delivers the event again
        invoke(client, "on_endpoint_state_change", deleting)
    stage.stub.add_client_error(
        "describe_endpoint", "ValidationException", 'Could not find endpoint "droptrain-dev-pets".'
    )
    stage.stub.add_response(
        "create_endpoint", {"EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/droptrain-dev-pets"}
    )
    assert invoke(client, "on_endpoint_state_change", deleting) == f"recreated endpoint droptrain-dev-pets with {run}"
    stage.stub.assert_no_pending_responses()
    assert invoke(client, "on_endpoint_state_change", deleting).startswith("ignored:"), "done once"


def test_an_endpoint_still_deleting_is_retried_by_lambda(stage, client):
    _, run = _run_to_tuning(stage, client)
    _complete_tuning(stage, client, run, f"s3://{BUCKET}/datasets/pets/")
    assert invoke(client, "on_training_job_state_change", _training_event(run)).startswith("registered as version 1")
    approved = package_event(stage, run)
    stage.route("describe_endpoint")
    stage.stub.add_response("describe_endpoint", _endpoint_description("old-run-11111111", "Deleting"))
    from chalice_app.adapters.errors import AdapterError

    with pytest.raises(AdapterError, match="being deleted"):
        invoke(client, "on_model_package_state_change", approved)


@pytest.mark.parametrize("name", ["Dogs (2024) & Cats #1", "o'brien's photos!"])
def test_datasets_with_any_name_start_a_run_with_valid_tags(stage, client, name):
    s3_event = stage.upload_folder(name)
    assert invoke(client, "on_dataset_uploaded", s3_event) == "tuning job created"
    job = stage.sagemaker.list_hyper_parameter_tuning_jobs()["HyperParameterTuningJobSummaries"][0]
    arn = stage.sagemaker.describe_hyper_parameter_tuning_job(
        HyperParameterTuningJobName=job["HyperParameterTuningJobName"]
    )["HyperParameterTuningJobArn"]
    tags = {t["Key"]: t["Value"] for t in stage.sagemaker.list_tags(ResourceArn=arn)["Tags"]}
    import regex

    assert (
        regex.fullmatch(r"[\p{L}\p{Z}\p{N}_.:/=+\-@]*", tags["droptrain:dataset"])
        and len(tags["droptrain:dataset"]) <= 256
    )
    assert names.dataset_of_tags(tags) == f"s3://{BUCKET}/datasets/{name}/"
    assert [n["dataset"] for n in stage.notifications()] == [f"s3://{BUCKET}/datasets/{name}/"] * 2


def test_a_dataset_whose_name_cannot_be_tagged_is_rejected_before_anything_is_announced(stage, client):
    name = "&" * 90
    s3_event = stage.upload_folder(name)
    assert invoke(client, "on_dataset_uploaded", s3_event).startswith("rejected:")
    notes = stage.notifications()
    assert [n["event"] for n in notes] == ["dataset.rejected"] and "too long to tag" in notes[0]["detail"]["reasons"][0]
    assert stage.sagemaker.list_hyper_parameter_tuning_jobs()["HyperParameterTuningJobSummaries"] == []


@pytest.mark.parametrize(
    "key, starts",
    [
        ("datasets/dogs.zip", True),
        ("datasets/Dogs.ZIP", True),
        ("datasets/cats.TaR.gZ", True),
        ("datasets/nested/x.tgz", True),
        ("datasets/x.tar", True),
        ("datasets/dogs/_READY", True),
        ("runs/dogs-1a2b3c4d/final/output/model.tar.gz", False),
        ("code/sourcedir-0123456789abcdef.tar.gz", False),
        ("elsewhere/dogs.zip", False),
        ("datasets/dogs.zip.part", False),
    ],
)
def test_the_upload_rule_takes_archives_in_any_case_under_the_dataset_prefix_only(key, starts):
    """Model artifacts and code tarballs elsewhere in the bucket no longer start the 3 GB upload function."""
    from chalice_app import patterns
    from droptrain.local.aws.bus import matches

    event = {
        "source": "aws.s3",
        "detail-type": "Object Created",
        "detail": {"bucket": {"name": BUCKET}, "object": {"key": key, "size": 1, "etag": "0" * 32}},
    }
    assert matches(patterns.dataset_uploaded({**os.environ, "DATA_BUCKET": BUCKET}), event) is starts


def test_an_archive_with_an_upper_case_suffix_starts_a_run(stage, client):
    s3_event = stage.upload_zip(
        "Dogs", {f"dogs/train/{c}/{i}.jpg": b"\xff\xd8\xff" for c in ("a", "b") for i in range(3)}
    )
    key = s3_event["detail"]["object"]["key"]
    stage.s3.copy_object(Bucket=BUCKET, Key="datasets/Dogs.Zip", CopySource={"Bucket": BUCKET, "Key": key})
    s3_event["detail"]["object"]["key"] = "datasets/Dogs.Zip"
    from chalice_app import patterns
    from droptrain.local.aws.bus import matches

    assert matches(patterns.dataset_uploaded(os.environ), s3_event), "EventBridge's rule lets it through"
    assert invoke(client, "on_dataset_uploaded", s3_event) == "tuning job created"


def test_spot_checkpoints_are_pruned_once_nothing_can_resume_them(stage, client):
    import dataclasses

    stage.services.config = dataclasses.replace(stage.services.config, use_spot=True)
    _, run = _run_to_tuning(stage, client)
    kept = f"runs/{run}/reports/profile.json"
    for key in (
        f"runs/{run}/checkpoints/tuning/checkpoint-a.pt",
        f"runs/{run}/checkpoints/tuning/checkpoint-b.pt",
        f"runs/{run}/checkpoints/final/checkpoint-c.pt",
        kept,
    ):
        stage.put(key, b"x" * 10)
    assert _complete_tuning(stage, client, run, f"s3://{BUCKET}/datasets/pets/") == "final training job created"
    left = {o["Key"] for o in stage.s3.list_objects_v2(Bucket=BUCKET, Prefix=f"runs/{run}/").get("Contents", [])}
    assert not any("/checkpoints/tuning/" in key for key in left), "the trials' checkpoints went"
    assert {f"runs/{run}/checkpoints/final/checkpoint-c.pt", kept} <= left, "the final job's, and everything else, stay"


def test_the_hourly_tick_creates_an_endpoint_whose_deletion_event_was_lost(stage, client):
    """The deletion events are the way; the tick is the net under them (a retried event that gave up)."""
    import json as json_module
    from datetime import datetime, timezone
    from unittest import mock

    stage.s3.put_object(
        Bucket=BUCKET,
        Key="runs/_endpoints/recreate/droptrain-dev-pets.json",
        Body=json_module.dumps({"run": "pets-1a2b3c4d", "dataset": None}).encode(),
    )
    stage.route("describe_endpoint", "create_endpoint")
    stage.stub.add_client_error(
        "describe_endpoint", "ValidationException", 'Could not find endpoint "droptrain-dev-pets".'
    )
    stage.stub.add_response(
        "create_endpoint",
        {"EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/droptrain-dev-pets"},
        {"EndpointName": "droptrain-dev-pets", "EndpointConfigName": "pets-1a2b3c4d", "Tags": mock.ANY},
    )
    tick = {
        "version": "0",
        "id": "tick",
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": "us-east-1",
        "resources": ["arn:aws:events:us-east-1:123456789012:rule/stop-idle"],
        "detail": {},
    }
    invoke(client, "stop_idle_endpoints", tick)
    stage.stub.assert_no_pending_responses()
    assert stage.s3.list_objects_v2(Bucket=BUCKET, Prefix="runs/_endpoints/").get("KeyCount") == 0


def test_an_imbalanced_dataset_is_tuned_for_balanced_accuracy(stage, client):
    for i in range(3, 12):  # beagle: 12 training images, the others 3 (4:1)
        stage.put(f"datasets/pets/train/beagle/extra-{i}.jpg")
    _, run = _run_to_tuning(stage, client)
    job = stage.sagemaker.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=run)
    objective = job["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]
    assert objective == {"Type": "Maximize", "MetricName": "valid:balanced_accuracy"}
    started = [n for n in stage.notifications() if n["event"] == "tuning.started"]
    assert started[0]["detail"]["objective"] == "valid:balanced_accuracy"
