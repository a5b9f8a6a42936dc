"""Training jobs on several instances and GPUs, and large folder datasets streamed rather than copied: the
configuration, the requests (valid for botocore), the cost, and the pipeline that carries them."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

from chalice_app import cost, names, scaling
from chalice_app import sagemaker_requests as requests
from chalice_app.config_values import ConfigError
from chalice_app.pipeline.services import billable_seconds
from orchestrator.conftest import BUCKET, invoke
from orchestrator.support import validate
from orchestrator.test_audit_step import _audit_ended, _audited_upload, _report
from orchestrator.test_pipeline import _complete_tuning, _run_to_tuning
from orchestrator.test_requests import DATASET, make_config

RUN = names.run_id(DATASET, "d41d8cd98f00b204e9800998ecf8427e")
TUNED = {"lr": "0.001", "epochs": "3", "batch-size": "32", "weight-decay": "0.0001"}
GIB = 1024**3


@pytest.mark.parametrize("variable", ["TRAINING_INSTANCE_COUNT", "FINAL_INSTANCE_COUNT"])
@pytest.mark.parametrize("value", ["0", "21", "two", "1.5", "-1"])
def test_instance_counts_out_of_range_are_refused_naming_the_variable(variable, value):
    with pytest.raises(ConfigError, match=variable) as caught:
        make_config(**{variable: value})
    assert caught.value.variable == variable


def test_the_final_job_takes_the_trials_count_unless_told_its_own():
    assert (make_config().training_instance_count, make_config().final_instance_count) == (1, 1)
    assert make_config(TRAINING_INSTANCE_COUNT=4).final_instance_count == 4
    config = make_config(TRAINING_INSTANCE_COUNT=4, FINAL_INSTANCE_COUNT=20)
    assert (config.training_instance_count, config.final_instance_count) == (4, 20)


@pytest.mark.parametrize(
    "instance, gpus",
    [
        ("ml.m5.xlarge", 0),
        ("ml.c5.4xlarge", 0),
        ("ml.g4dn.xlarge", 1),
        ("ml.g5.16xlarge", 1),
        ("ml.g4dn.12xlarge", 4),
        ("ml.g5.12xlarge", 4),
        ("ml.g6e.48xlarge", 8),
        ("ml.p4d.24xlarge", 8),
        ("ml.p5.48xlarge", 8),
        ("ml.p6-b200.48xlarge", 8),
        ("ml.g7e.2xlarge", None),  # a GPU family the table does not know: the container counts its GPUs
    ],
)
def test_gpus_per_instance(instance, gpus):
    assert scaling.gpus(instance) == gpus
    assert scaling.processes(instance, 3) == (None if gpus is None else 3 * max(gpus, 1))


@pytest.mark.parametrize(
    "instance, count, launched",
    [
        ("ml.g4dn.xlarge", 1, False),  # one GPU, one process: launched as it always was
        ("ml.m5.xlarge", 1, False),
        ("ml.g4dn.xlarge", 2, True),
        ("ml.m5.xlarge", 3, True),  # CPU instances: one process each, gloo
        ("ml.g5.12xlarge", 1, True),  # four GPUs on one instance
        ("ml.p4d.24xlarge", 20, True),
        ("ml.g7e.2xlarge", 1, True),
    ],
)
def test_every_training_job_carries_its_instance_count_and_the_launcher_when_it_runs_several_processes(
    instance, count, launched
):
    config = make_config(TRAINING_INSTANCE_TYPE=instance, TRAINING_INSTANCE_COUNT=count)
    tuning = requests.tuning_job_request(config, RUN, DATASET)
    validate("sagemaker", "CreateHyperParameterTuningJob", tuning)
    definition = tuning["TrainingJobDefinition"]
    assert definition["ResourceConfig"]["InstanceCount"] == count
    static = definition["StaticHyperParameters"]
    assert static.get("sagemaker_torch_distributed_enabled") == ("true" if launched else None)
    final = requests.final_training_request(config, RUN, DATASET.uri, static, TUNED)
    validate("sagemaker", "CreateTrainingJob", final)
    assert final["ResourceConfig"]["InstanceCount"] == count
    assert final["HyperParameters"].get("sagemaker_torch_distributed_enabled") == ("true" if launched else None)


def test_the_final_job_runs_on_its_own_count_whatever_the_trials_ran_on():
    wide_trials = make_config(TRAINING_INSTANCE_COUNT=4, FINAL_INSTANCE_COUNT=1)
    static = requests.tuning_job_request(wide_trials, RUN, DATASET)["TrainingJobDefinition"]["StaticHyperParameters"]
    assert static["sagemaker_torch_distributed_enabled"] == "true"
    final = requests.final_training_request(wide_trials, RUN, DATASET.uri, static, TUNED)
    assert final["ResourceConfig"]["InstanceCount"] == 1
    assert "sagemaker_torch_distributed_enabled" not in final["HyperParameters"], "one process: the plain launch"
    wide_final = make_config(TRAINING_INSTANCE_COUNT=1, FINAL_INSTANCE_COUNT=3)
    static = requests.tuning_job_request(wide_final, RUN, DATASET)["TrainingJobDefinition"]["StaticHyperParameters"]
    assert "sagemaker_torch_distributed_enabled" not in static
    final = requests.final_training_request(wide_final, RUN, DATASET.uri, static, TUNED)
    assert final["ResourceConfig"]["InstanceCount"] == 3
    assert final["HyperParameters"]["sagemaker_torch_distributed_enabled"] == "true"


def test_folder_datasets_from_the_threshold_up_are_streamed_and_archives_copied():
    config = make_config(FAST_FILE_MIN_GB=50)
    archive = names.DatasetRef(BUCKET, "datasets/dogs.zip", "dogs", "archive", "datasets/dogs.zip")
    cases = [(DATASET, 50 * GIB, "FastFile"), (DATASET, 50 * GIB - 1, "File"), (DATASET, None, "File")]
    cases.append((archive, 500 * GIB, "File"))  # one object, extracted by train.py
    for dataset, size, mode in cases:
        request = requests.tuning_job_request(config, RUN, dataset, dataset_bytes=size)
        validate("sagemaker", "CreateHyperParameterTuningJob", request)
        definition = request["TrainingJobDefinition"]
        assert requests.training_input_mode(definition) == mode, (dataset.kind, size)
        (training,) = [c for c in definition["InputDataConfig"] if c["ChannelName"] == "training"]
        assert training.get("InputMode", "File") == mode
        assert definition["AlgorithmSpecification"]["TrainingInputMode"] == "File", "other channels stay copied"
    assert requests.input_mode(make_config(FAST_FILE_MIN_GB=0), "folder", 0) == "FastFile", "0: always streamed"
    with pytest.raises(ConfigError, match="FAST_FILE_MIN_GB"):
        make_config(FAST_FILE_MIN_GB="-1")


def test_the_forecast_and_the_budget_count_every_instance():
    one, four = (
        make_config(TRAINING_INSTANCE_TYPE="ml.g5.xlarge"),
        make_config(TRAINING_INSTANCE_TYPE="ml.g5.xlarge", TRAINING_INSTANCE_COUNT=4, FINAL_INSTANCE_COUNT=2),
    )
    price, images = cost.Price(1.408, "bundled", "2025-06"), 100_000
    plans = [cost.plan(c, images, price, 8) for c in (one, four)]
    narrow, wide = (cost.forecast(c, images, p, price, None) for c, p in zip((one, four), plans))
    seconds = [cost.job_seconds("ml.g5.xlarge", images, 10, "head", n)[0] for n in (1, 4, 2)]
    work = seconds[0] - cost.JOB_OVERHEAD_SECONDS
    assert seconds[1] - cost.JOB_OVERHEAD_SECONDS == pytest.approx(work / (4 * cost.SCALING_EFFICIENCY))
    assert wide["minutes_per_job"] < narrow["minutes_per_job"]
    assert (wide["instances_per_trial"], wide["final_instances"]) == (4, 2)
    assert wide["tuning_usd"] == pytest.approx(8 * seconds[1] / 3600 * 1.408 * 4, abs=0.01)
    assert wide["final_usd"] == pytest.approx(seconds[2] / 3600 * 1.408 * 2, abs=0.01)
    assert "4 instances at 90% scaling efficiency" in wide["throughput"]
    limit = plans[1].max_runtime_seconds / 3600
    assert wide["worst_case_usd"] == pytest.approx((8 * 4 + 2) * limit * 1.408, abs=0.01)
    # A budget that fits the one-instance run (9 jobs of 805 s at most) cuts the four-instance run's trials.
    budget = 3.0
    bounded = [cost.plan(dataclasses.replace(c, max_run_cost_usd=budget), images, price, 8) for c in (one, four)]
    assert bounded[0].trials == 8 and 1 <= bounded[1].trials < 8 and bounded[1].bounded_by_budget
    with pytest.raises(cost.BudgetError, match=r"at least one trial and the final job \(4 and 2 instance\(s\)\)"):
        cost.plan(dataclasses.replace(four, max_run_cost_usd=1.0), images, price, 8)


def test_what_a_run_cost_counts_each_instance_of_each_job():
    def described(name, seconds, count):
        return {"TrainingJobName": name, "BillableTimeInSeconds": seconds, "ResourceConfig": {"InstanceCount": count}}

    jobs = {"r-001-a": described("r-001-a", 100, 4), "r-002-b": described("r-002-b", 50, 4)}
    sagemaker = SimpleNamespace(
        list_trials=lambda run: [{"TrainingJobName": n} for n in jobs],
        describe_training_job=jobs.__getitem__,
    )
    seconds = billable_seconds(SimpleNamespace(sagemaker=sagemaker), "r", described("r-final", 30, 2))
    assert seconds == {"r-001-a": 400.0, "r-002-b": 200.0, "r-final": 60.0}


def test_the_pipeline_carries_the_width_and_the_input_mode_from_upload_to_final_job(stage, client):
    # The test's folder is a few hundred bytes: a threshold below that streams it.
    stage.services.config = dataclasses.replace(
        stage.services.config, training_instance_count=2, final_instance_count=3, fast_file_min_gb=1e-7
    )
    _, run = _run_to_tuning(stage, client)
    described = stage.sagemaker.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=run)
    definition = described["TrainingJobDefinition"]
    assert definition["ResourceConfig"]["InstanceCount"] == 2
    assert definition["StaticHyperParameters"]["sagemaker_torch_distributed_enabled"] == "true"
    assert requests.training_input_mode(definition) == "FastFile"
    notes = stage.notifications()
    accepted, started = notes[0]["detail"], notes[1]["detail"]
    assert accepted["bytes"] > 0
    assert (started["instance_count"], started["processes_per_job"], started["input_mode"]) == (2, 2, "FastFile")
    assert started["forecast"]["instances_per_trial"] == 2 and started["forecast"]["final_instances"] == 3

    assert _complete_tuning(stage, client, run, f"s3://{BUCKET}/datasets/pets/") == "final training job created"
    final = stage.sagemaker.describe_training_job(TrainingJobName=f"{run}-final")
    assert final["ResourceConfig"]["InstanceCount"] == 3
    assert final["HyperParameters"]["sagemaker_torch_distributed_enabled"] == "true"
    assert requests.training_input_mode(final) == "FastFile", "the trials' mode"
    training_started = stage.notifications()[-1]
    assert training_started["event"] == "training.started"
    assert (training_started["detail"]["instance_count"], training_started["detail"]["input_mode"]) == (3, "FastFile")


def test_after_the_audit_the_tuning_job_reads_the_dataset_as_its_size_says(stage, client):
    run = _audited_upload(stage, client)
    audit = stage.sagemaker.describe_processing_job(ProcessingJobName=f"{run}-audit")
    tags = {t["Key"]: t["Value"] for t in stage.sagemaker.list_tags(ResourceArn=audit["ProcessingJobArn"])["Tags"]}
    size = int(tags[names.TAG_DATASET_BYTES])
    assert size == sum(
        o["Size"] for o in stage.s3.list_objects_v2(Bucket=BUCKET, Prefix="datasets/pets/")["Contents"]
    ), "the upload's listing: everything a File-mode job would copy"
    stage.services.config = dataclasses.replace(stage.services.config, fast_file_min_gb=size / 1024**3)
    stage.put(f"runs/{run}/reports/audit.json", _report())
    assert invoke(client, "on_processing_job_state_change", _audit_ended(run)) == "tuning job created"
    described = stage.sagemaker.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=run)
    assert requests.training_input_mode(described["TrainingJobDefinition"]) == "FastFile"


def test_a_type_of_several_gpus_is_forecast_from_its_familys_one_gpu_row():
    (head, full), source = cost.throughput("ml.g5.12xlarge")
    (one_head, one_full), _ = cost.THROUGHPUT["ml.g5.xlarge"]
    assert (head, full) == pytest.approx((one_head * 4 * 0.9, one_full * 4 * 0.9))
    assert "4 GPUs" in source and "estimate" in source
    assert cost.throughput("ml.g7e.2xlarge") == cost.UNKNOWN_THROUGHPUT, "no row to scale: the slowest row"
    assert cost.throughput("ml.g5.xlarge") == cost.THROUGHPUT["ml.g5.xlarge"]


@pytest.mark.parametrize("instance", ["ml.p6-b200.48xlarge", "ml.m7i-flex.large", "ml.g6e.12xlarge"])
def test_instance_types_with_a_hyphenated_family_are_accepted_as_botocore_lists_them(instance):
    config = make_config(TRAINING_INSTANCE_TYPE=instance, TRAINING_INSTANCE_COUNT=2)
    request = requests.tuning_job_request(config, RUN, DATASET)
    validate("sagemaker", "CreateHyperParameterTuningJob", request)  # botocore's enum lists each of them
    assert request["TrainingJobDefinition"]["ResourceConfig"]["InstanceType"] == instance
    for bad in ("ml.-p6.48xlarge", "ml.p6-.48xlarge", "ml.p6--b200.48xlarge", "p6-b200.48xlarge"):
        with pytest.raises(ConfigError, match="TRAINING_INSTANCE_TYPE"):
            make_config(TRAINING_INSTANCE_TYPE=bad)
