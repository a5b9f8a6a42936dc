"""The dataset audit step on the moto-backed stage: the Processing job's request, and what its end does."""

from __future__ import annotations

import dataclasses
import json

from chalice_app import audit_requests, names
from chalice_app import sagemaker_requests as requests
from orchestrator.conftest import BUCKET, invoke
from orchestrator.support import validate
from orchestrator.test_requests import make_config


def test_the_audit_job_request_is_valid():
    config = make_config(AUDIT="true")
    request = audit_requests.audit_job_request(config, "dogs-3f9a1c2e", "s3://droptrain-data-dev/datasets/dogs/")
    validate("sagemaker", "CreateProcessingJob", request)
    assert request["ProcessingJobName"] == "dogs-3f9a1c2e-audit"
    assert request["AppSpecification"]["ImageUri"] == config.training_image_uri, (
        "without its own, the training image: it has PIL and the code's needs"
    )
    cpu = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch:2.14-cpu-amzn2023-sagemaker"
    own = audit_requests.audit_job_request(make_config(AUDIT="true", AUDIT_IMAGE_URI=cpu), "dogs-3f9a1c2e", "s3://b/d/")
    assert own["AppSpecification"]["ImageUri"] == cpu, "the training image's CPU build, for the audit's CPU instance"
    assert (
        request["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["S3Uri"]
        == "s3://droptrain-data-dev/runs/dogs-3f9a1c2e/reports/"
    )
    assert {t["Key"]: t["Value"] for t in request["Tags"]}["droptrain:role"] == "audit"


def _audited_upload(stage, client, name="pets"):
    stage.services.config = dataclasses.replace(stage.services.config, audit=True)
    s3_event = stage.upload_folder(name)
    run = names.run_id(
        names.parse_dataset_key(BUCKET, f"datasets/{name}/_READY", "datasets/"), s3_event["detail"]["object"]["etag"]
    )
    assert invoke(client, "on_dataset_uploaded", s3_event) == "audit job created"
    tuning = stage.sagemaker.list_hyper_parameter_tuning_jobs()["HyperParameterTuningJobSummaries"]
    assert run not in {j["HyperParameterTuningJobName"] for j in tuning}, "not before the audit"
    notes = stage.notifications()
    assert [n["event"] for n in notes] == ["dataset.accepted"] and notes[0]["detail"]["audit"] == f"{run}-audit"
    return run


def _audit_ended(run: str, status: str = "Completed") -> dict:
    return {
        "version": "0",
        "id": f"audit-{run}-{status}",
        "detail-type": "SageMaker Processing Job State Change",
        "source": "aws.sagemaker",
        "account": "123456789012",
        "time": "2026-11-24T12:00:00Z",
        "region": "us-east-1",
        "resources": [f"arn:aws:sagemaker:us-east-1:123456789012:processing-job/{run}-audit"],
        "detail": {
            "ProcessingJobName": f"{run}-audit",
            "ProcessingJobStatus": status,
            "ProcessingJobArn": f"arn:aws:sagemaker:us-east-1:123456789012:processing-job/{run}-audit",
        },
    }


def _report(blocking=(), duplicates=None) -> bytes:
    return json.dumps(
        {
            "images": 27,
            "classes": ["beagle", "corgi", "pug"],
            "counts": {"train": {"beagle": 3}},
            "imbalance_ratio": 1.0,
            "unreadable": [],
            "duplicates": duplicates or [],
            "duplicate_summary": {"exact within a class": 1} if duplicates else {},
            "not_rgb": [{"path": "x", "mode": "CMYK"}],
            "tiny_images": [],
            "extreme_aspect": [],
            "hidden_folders": ["train/__MACOSX"],
            "class_name_twins": [],
            "blocking": list(blocking),
            "leaked": ["test/pug/1.jpg"] if blocking else [],
        }
    ).encode()


def test_a_clean_audit_starts_the_tuning_job_with_its_warnings_told(stage, client):
    run = _audited_upload(stage, client)
    stage.put(
        f"runs/{run}/reports/audit.json",
        _report(duplicates=[{"kind": "exact", "where": "within a class", "files": []}]),
    )
    assert invoke(client, "on_processing_job_state_change", _audit_ended(run)) == "tuning job created"
    notes = stage.notifications()
    assert [n["event"] for n in notes] == ["dataset.audited", "tuning.started"]
    warnings = notes[0]["detail"]["warnings"]
    assert "1 exact within a class duplicate pair(s)" in warnings and "1 image(s) not in RGB" in warnings
    assert "1 hidden folder(s) ignored" in warnings
    assert notes[0]["detail"]["page"] == f"s3://{BUCKET}/runs/{run}/reports/audit.html"
    assert notes[1]["detail"]["forecast"]["images"] == 27, "the audit's own count"
    # Delivered twice: one tuning job, one notification of each.
    assert invoke(client, "on_processing_job_state_change", _audit_ended(run)) == "tuning job already existed"
    assert stage.notifications() == []


def test_the_audit_s_own_warning_lines_are_told_as_they_are(stage, client):
    """An audit that tells its warnings (each kind once, with examples) is quoted, not recounted."""
    run = _audited_upload(stage, client)
    lines = [
        "all 27 image(s) are grey (L); training converts them to RGB",
        "1 possible mislabel(s): the same image under two classes, e.g. train/pug/1.jpg ≈ train/corgi/2.jpg",
    ]
    report = {**json.loads(_report()), "warnings": lines}
    stage.put(f"runs/{run}/reports/audit.json", json.dumps(report).encode())
    assert invoke(client, "on_processing_job_state_change", _audit_ended(run)) == "tuning job created"
    audited = stage.notifications()[0]
    assert audited["detail"]["warnings"] == lines


def test_blocking_findings_reject_the_run_with_the_evidence(stage, client):
    run = _audited_upload(stage, client)
    stage.put(
        f"runs/{run}/reports/audit.json",
        _report(blocking=["2 test images duplicate images of other splits (11.1% ...)"]),
    )
    outcome = invoke(client, "on_processing_job_state_change", _audit_ended(run))
    assert outcome.startswith("rejected: 2 test images duplicate")
    rejected = stage.notifications()
    assert [n["event"] for n in rejected] == ["dataset.rejected"]
    assert rejected[0]["detail"]["leaked"] == ["test/pug/1.jpg"] and rejected[0]["detail"]["checked"] == "audit"
    assert stage.sagemaker.list_hyper_parameter_tuning_jobs()["HyperParameterTuningJobSummaries"] == []


def test_an_audit_that_wrote_nothing_rejects_the_run(stage, client):
    run = _audited_upload(stage, client)
    assert invoke(client, "on_processing_job_state_change", _audit_ended(run, "Failed")).startswith(
        "rejected: the dataset audit failed"
    )
    assert invoke(
        client,
        "on_processing_job_state_change",
        {**_audit_ended(run), "detail": {"ProcessingJobName": "someone-elses-job", "ProcessingJobStatus": "Completed"}},
    ).startswith("ignored")


def test_the_rule_routes_only_audit_endings():
    from chalice_app import patterns
    from droptrain.local.aws.bus import matches

    rule = patterns.processing_job_state_change({})
    assert matches(rule, _audit_ended("pets-1a2b3c4d"))
    assert not matches(rule, _audit_ended("pets-1a2b3c4d", "InProgress"))
    other = _audit_ended("pets-1a2b3c4d")
    other["detail"]["ProcessingJobName"] = "feature-store-ingest"
    assert not matches(rule, other)


def test_audit_fix_mends_leakage_and_the_trials_get_the_report(stage, client):
    run = _audited_upload(stage, client)
    stage.services.config = dataclasses.replace(stage.services.config, audit_fix=True)
    report = json.loads(_report(blocking=["1 test images duplicate images of other splits (3.7% ...)"]))
    report["blocking_kinds"] = ["leakage"]
    stage.put(f"runs/{run}/reports/audit.json", json.dumps(report).encode())
    assert invoke(client, "on_processing_job_state_change", _audit_ended(run)) == "tuning job created"
    audited = stage.notifications()[0]
    assert audited["event"] == "dataset.audited" and audited["detail"]["warnings"][0].startswith(
        "AUDIT_FIX: 1 held-out image(s)"
    )
    described = stage.sagemaker.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=run)
    channels = {
        c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"]
        for c in described["TrainingJobDefinition"]["InputDataConfig"]
    }
    assert channels["audit"] == f"s3://{BUCKET}/runs/{run}/reports/audit.json"
    final = requests.final_training_request(
        stage.services.config, run, f"s3://{BUCKET}/datasets/pets/", {}, {}, None, None, channels["audit"]
    )
    validate("sagemaker", "CreateTrainingJob", final)
    # A class too small still blocks, fix or not.
    report["blocking"].append("classes with fewer than 5 training images: rare (3)")
    report["blocking_kinds"].append("small_classes")
    second = _audited_upload(stage, client, "flowers")
    stage.services.config = dataclasses.replace(stage.services.config, audit_fix=True)
    stage.put(f"runs/{second}/reports/audit.json", json.dumps(report).encode())
    assert (
        invoke(client, "on_processing_job_state_change", _audit_ended(second))
        == "rejected: classes with fewer than 5 training images: rare (3)"
    )


def test_a_large_folder_is_scanned_by_several_instances_then_audited_as_a_whole_by_one():
    config = make_config(AUDIT="true", AUDIT_IMAGES_PER_INSTANCE="100000")
    assert [audit_requests.instances(config, "folder", n) for n in (1, 100_000, 100_001, 250_000)] == [1, 1, 2, 3]
    assert audit_requests.instances(config, "folder", 10**9) == 20, "at most 20 instances"
    assert audit_requests.instances(config, "archive", 10**6) == 1, "an archive is one object: no shares"
    run, dataset = "dogs-3f9a1c2e", "s3://droptrain-data-dev/datasets/dogs/"
    scan = audit_requests.audit_job_request(config, run, dataset, 10**12, 3)
    validate("sagemaker", "CreateProcessingJob", scan)
    assert scan["ProcessingJobName"] == "dogs-3f9a1c2e-shards-audit"
    assert scan["ProcessingResources"]["ClusterConfig"]["InstanceCount"] == 3
    data = next(i["S3Input"] for i in scan["ProcessingInputs"] if i["InputName"] == "data")
    assert data["S3DataDistributionType"] == "ShardedByS3Key" and data["S3Uri"] == dataset
    assert scan["AppSpecification"]["ContainerArguments"][-2:] == ["--mode", "shard"]
    shards = "s3://droptrain-data-dev/runs/dogs-3f9a1c2e/reports/audit-shards/"
    assert scan["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["S3Uri"] == shards
    merge = audit_requests.audit_merge_request(config, run, scan["Tags"])
    validate("sagemaker", "CreateProcessingJob", merge)
    assert merge["ProcessingJobName"] == "dogs-3f9a1c2e-audit" and merge["Tags"] == scan["Tags"]
    assert merge["ProcessingResources"]["ClusterConfig"]["InstanceCount"] == 1
    merged_input = next(i["S3Input"] for i in merge["ProcessingInputs"] if i["InputName"] == "data")
    assert merged_input["S3Uri"] == shards and "S3DataDistributionType" not in merged_input
    assert merge["AppSpecification"]["ContainerArguments"][-2:] == ["--mode", "merge"]
    one = audit_requests.audit_job_request(config, run, dataset, 10**6, 1)
    assert (
        one["ProcessingJobName"] == "dogs-3f9a1c2e-audit"
        and "--mode" not in one["AppSpecification"]["ContainerArguments"]
    )


def _scan_ended(run: str, status: str = "Completed") -> dict:
    ended = _audit_ended(run, status)
    for key in ("ProcessingJobName", "ProcessingJobArn"):
        ended["detail"][key] = ended["detail"][key].replace("-audit", "-shards-audit")
    ended["id"] += "-shards"
    return ended


def test_the_pipeline_merges_a_sharded_scan_before_it_reads_the_audit(stage, client):
    stage.services.config = dataclasses.replace(stage.services.config, audit=True, audit_images_per_instance=10)
    s3_event = stage.upload_folder("pets")  # 27 images: three instances of 10
    run = names.run_id(
        names.parse_dataset_key(BUCKET, "datasets/pets/_READY", "datasets/"), s3_event["detail"]["object"]["etag"]
    )
    assert invoke(client, "on_dataset_uploaded", s3_event) == "audit job created"
    scan = stage.sagemaker.describe_processing_job(ProcessingJobName=f"{run}-shards-audit")
    data = next(i["S3Input"] for i in scan["ProcessingInputs"] if i["InputName"] == "data")
    assert data["S3DataDistributionType"] == "ShardedByS3Key"
    assert stage.notifications()[0]["detail"]["audit"] == f"{run}-shards-audit"
    assert invoke(client, "on_processing_job_state_change", _scan_ended(run)) == "audit merge job created"
    merge = stage.sagemaker.describe_processing_job(ProcessingJobName=f"{run}-audit")
    tags = {t["Key"]: t["Value"] for t in stage.sagemaker.list_tags(ResourceArn=merge["ProcessingJobArn"])["Tags"]}
    assert tags["droptrain:role"] == "audit" and int(tags[names.TAG_DATASET_BYTES]) > 0, "the scan's tags carried"
    assert stage.notifications() == [], "nothing to tell until the audit is whole"
    stage.put(f"runs/{run}/reports/audit.json", _report())
    assert invoke(client, "on_processing_job_state_change", _audit_ended(run)) == "tuning job created"


def test_a_failed_scan_rejects_the_run(stage, client):
    stage.services.config = dataclasses.replace(stage.services.config, audit=True, audit_images_per_instance=10)
    s3_event = stage.upload_folder("pets")
    run = names.run_id(
        names.parse_dataset_key(BUCKET, "datasets/pets/_READY", "datasets/"), s3_event["detail"]["object"]["etag"]
    )
    assert invoke(client, "on_dataset_uploaded", s3_event) == "audit job created"
    stage.notifications()
    assert invoke(client, "on_processing_job_state_change", _scan_ended(run, "Failed")).startswith(
        "rejected: the dataset audit failed"
    )
    assert [n["event"] for n in stage.notifications()] == ["dataset.rejected"]


def test_after_the_audit_the_objective_follows_its_imbalance_ratio(stage, client):
    run = _audited_upload(stage, client)
    report = json.loads(_report())
    report["imbalance_ratio"] = 5.0
    stage.put(f"runs/{run}/reports/audit.json", json.dumps(report).encode())
    assert invoke(client, "on_processing_job_state_change", _audit_ended(run)) == "tuning job created"
    job = stage.sagemaker.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=run)
    assert job["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]["MetricName"] == (
        "valid:balanced_accuracy"
    )
