"""The cost forecast, the budget that bounds a run, the prices behind them, and what a run cost."""

from __future__ import annotations

import json

import boto3
import pytest
from botocore.stub import Stubber

from chalice_app import cost, names
from chalice_app import sagemaker_requests as requests
from chalice_app.adapters.pricing import PricingAdapter
from orchestrator.conftest import BUCKET, invoke
from orchestrator.support import validate
from orchestrator.test_requests import DATASET, make_config

TRAINING = cost.Price(0.736, "bundled", cost.BUNDLED_PRICES_AS_OF)
HOSTING = cost.Price(0.115, "bundled", cost.BUNDLED_PRICES_AS_OF)


def test_the_forecast_adds_up():
    config = make_config(TRAINING_INSTANCE_TYPE="ml.g4dn.xlarge", MAX_TUNING_JOBS=8, INFERENCE_INSTANCE_COUNT=2)
    run_plan = cost.plan(config, 8000, TRAINING, requests.configured_trials(config))
    assert run_plan == cost.Plan(8, 2, config.max_runtime_seconds, False), "no budget: the configured limits"
    forecast = cost.forecast(config, 8000, run_plan, TRAINING, HOSTING)
    seconds = cost.JOB_OVERHEAD_SECONDS + 8000 / cost.THROUGHPUT["ml.g4dn.xlarge"][0][0]  # head mode: one pass
    per_job = seconds / 3600 * 0.736
    assert forecast["minutes_per_job"] == round(seconds / 60, 1)
    assert forecast["tuning_usd"] == round(8 * per_job, 2) and forecast["final_usd"] == round(per_job, 2)
    assert forecast["run_usd"] == round(9 * per_job, 2)
    assert forecast["endpoint_usd_per_day"] == round(0.115 * 24 * 2, 2)
    assert forecast["prices"]["training"] == {
        "source": "bundled",
        "as_of": cost.BUNDLED_PRICES_AS_OF,
        "usd_per_hour": 0.736,
    }
    assert forecast["throughput"].startswith("estimate"), "the forecast says where its speed came from"
    serverless = make_config(INFERENCE_INSTANCE_TYPE="serverless")
    assert (
        cost.forecast(serverless, 10, cost.plan(serverless, 10, TRAINING, 8), TRAINING, None)["endpoint_usd_per_day"]
        is None
    )


def test_the_forecast_reads_the_training_mode_as_train_py_does():
    head = make_config(
        TRAINING_INSTANCE_TYPE="ml.g4dn.xlarge", STATIC_HYPERPARAMETERS=json.dumps({"train-mode": "head"})
    )
    full = make_config(
        TRAINING_INSTANCE_TYPE="ml.g4dn.xlarge", STATIC_HYPERPARAMETERS=json.dumps({"train-mode": "full", "epochs": 3})
    )

    def minutes(config):
        return cost.forecast(config, 8000, cost.plan(config, 8000, TRAINING, 4), TRAINING, HOSTING)["minutes_per_job"]

    assert minutes(full) > minutes(head)
    for spelling in ("Full", "FULL", '"full"'):
        config = make_config(
            TRAINING_INSTANCE_TYPE="ml.g4dn.xlarge",
            STATIC_HYPERPARAMETERS=json.dumps({"train-mode": spelling, "epochs": 3}),
        )
        assert minutes(config) == minutes(full), spelling


def test_a_budget_bounds_the_trials_and_every_jobs_runtime():
    config = make_config(TRAINING_INSTANCE_TYPE="ml.g4dn.xlarge", MAX_TUNING_JOBS=20, MAX_RUN_COST_USD="2.00")
    run_plan = cost.plan(config, 8000, TRAINING, 20)
    assert run_plan.bounded_by_budget and 1 <= run_plan.trials < 20
    # Even if every job ran to its limit, the run stays within the budget.
    worst = (run_plan.trials + 1) * run_plan.max_runtime_seconds / 3600 * TRAINING.usd_per_hour
    assert worst <= 2.00
    assert run_plan.max_runtime_seconds >= 2 * cost.job_seconds("ml.g4dn.xlarge", 8000, 10, "head")[0] - 1, (
        "room to finish"
    )
    request = requests.tuning_job_request(config, "dogs-3f9a1c2e", DATASET, run_plan)
    validate("sagemaker", "CreateHyperParameterTuningJob", request)
    assert request["HyperParameterTuningJobConfig"]["ResourceLimits"] == {
        "MaxNumberOfTrainingJobs": run_plan.trials,
        "MaxParallelTrainingJobs": min(2, run_plan.trials),
    }
    assert request["TrainingJobDefinition"]["StoppingCondition"]["MaxRuntimeInSeconds"] == run_plan.max_runtime_seconds
    final = requests.final_training_request(
        config, "dogs-3f9a1c2e", DATASET.uri, {}, {}, None, run_plan.max_runtime_seconds
    )
    assert final["StoppingCondition"]["MaxRuntimeInSeconds"] == run_plan.max_runtime_seconds


def test_a_run_whose_minimum_cannot_fit_is_refused_with_the_numbers():
    config = make_config(TRAINING_INSTANCE_TYPE="ml.g5.2xlarge", MAX_RUN_COST_USD="0.50")
    with pytest.raises(
        cost.BudgetError, match=r"at least one trial and the final job.*\$1\.515/h.*over MAX_RUN_COST_USD \$0\.50"
    ):
        cost.plan(config, 100_000, cost.bundled_price("ml.g5.2xlarge", "Training"), 8)
    grid = make_config(TUNING_STRATEGY="Grid", MAX_RUN_COST_USD="0.30")
    with pytest.raises(cost.BudgetError, match="Grid search runs all 6 combinations"):
        cost.plan(grid, 1000, cost.bundled_price("ml.g4dn.xlarge", "Training"), requests.configured_trials(grid))
    with pytest.raises(cost.BudgetError, match="no price is known"):
        cost.plan(make_config(TRAINING_INSTANCE_TYPE="ml.x9.large", MAX_RUN_COST_USD="5"), 10, None, 8)


def test_actual_cost_is_the_billable_seconds_at_the_price():
    spent = cost.actual({"a-001": 600.0, "a-002": 300.0, "a-final": 900.0}, TRAINING)
    assert spent == {
        "billable_seconds": 1800.0,
        "jobs": 3,
        "usd": round(0.5 * 0.736, 4),
        "price": {"source": "bundled", "as_of": cost.BUNDLED_PRICES_AS_OF, "usd_per_hour": 0.736},
    }


def _price_list(usd: str, unit: str = "Hrs") -> str:
    return json.dumps(
        {
            "product": {"attributes": {"instanceName": "ml.g5.xlarge", "component": "Training"}},
            "terms": {"OnDemand": {"T1": {"priceDimensions": {"D1": {"unit": unit, "pricePerUnit": {"USD": usd}}}}}},
        }
    )


def test_prices_come_from_the_price_list_api_else_the_bundled_table():
    client = boto3.client("pricing", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")
    stub = Stubber(client)
    expected = {
        "ServiceCode": "AmazonSageMaker",
        "MaxResults": 10,
        "Filters": [
            {"Type": "TERM_MATCH", "Field": "regionCode", "Value": "eu-west-1"},
            {"Type": "TERM_MATCH", "Field": "instanceName", "Value": "ml.g5.xlarge"},
            {"Type": "TERM_MATCH", "Field": "component", "Value": "Training"},
        ],
    }
    validate("pricing", "GetProducts", expected)
    stub.add_response("get_products", {"FormatVersion": "aws_v1", "PriceList": [_price_list("1.57")]}, expected)
    stub.add_client_error("get_products", "ThrottlingException", "slow down")
    stub.add_response("get_products", {"PriceList": [_price_list("1.2"), _price_list("1.9")]})  # two prices: which?
    with stub:
        prices = PricingAdapter(client, "eu-west-1")
        found = prices.hourly("ml.g5.xlarge", "Training")
        assert (found.usd_per_hour, found.source) == (1.57, "price-list-api")
        assert prices.hourly("ml.g5.xlarge", "Training") is found, "asked once per container"
        assert prices.hourly("ml.m5.large", "Hosting") == cost.bundled_price("ml.m5.large", "Hosting"), (
            "throttled: the table"
        )
        assert prices.hourly("ml.g5.2xlarge", "Training").source == "bundled", "ambiguous: the table"
        stub.assert_no_pending_responses()


def test_the_pipeline_forecasts_bounds_and_reports_cost(stage, client):
    import dataclasses

    from orchestrator.test_pipeline import _complete_tuning, _training_event

    s3_event = stage.upload_folder("pets")
    run = names.run_id(
        names.parse_dataset_key(BUCKET, "datasets/pets/_READY", "datasets/"), s3_event["detail"]["object"]["etag"]
    )
    assert invoke(client, "on_dataset_uploaded", s3_event) == "tuning job created"
    started = [n for n in stage.notifications() if n["event"] == "tuning.started"][0]
    forecast = started["detail"]["forecast"]
    assert forecast["images"] == 27 and forecast["trials"] == 8 and forecast["run_usd"] > 0
    assert "$" in started["subject"]
    _complete_tuning(stage, client, run, f"s3://{BUCKET}/datasets/pets/")
    stage.notifications()
    invoke(client, "on_training_job_state_change", _training_event(run))
    completed = [n for n in stage.notifications() if n["event"] == "training.completed"][0]
    spent = completed["detail"]["cost"]
    assert (
        spent["price"]["usd_per_hour"] == cost.bundled_price("ml.g4dn.xlarge", "Training").usd_per_hour
        or spent["price"]["source"] == "price-list-api"
    )
    assert spent["usd"] == round(spent["billable_seconds"] / 3600 * spent["price"]["usd_per_hour"], 4)

    # A budget the run cannot fit rejects the dataset before anything starts.
    stage.services.config = dataclasses.replace(stage.services.config, max_run_cost_usd=0.05)
    refused = stage.upload_folder("flowers")
    assert invoke(client, "on_dataset_uploaded", refused).startswith("rejected: the run needs at least one trial")
    rejected = [n for n in stage.notifications() if n["event"] == "dataset.rejected"]
    assert len(rejected) == 1 and "MAX_RUN_COST_USD $0.05" in rejected[0]["detail"]["reasons"][0]
    assert len(stage.sagemaker.list_hyper_parameter_tuning_jobs()["HyperParameterTuningJobSummaries"]) == 1


def _tick(moment) -> dict:
    return {
        "version": "0",
        "id": f"tick-{moment:%H%M%S}",
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": "us-east-1",
        "resources": ["arn:aws:events:us-east-1:123456789012:rule/stop-idle"],
        "detail": {},
    }


def test_an_idle_endpoint_is_stopped_and_the_next_prediction_starts_it_again(stage, client):
    import dataclasses
    from datetime import datetime, timedelta, timezone

    from orchestrator.test_projects import _first_version

    assert (
        invoke(client, "stop_idle_endpoints", _tick(datetime.now(timezone.utc)))
        == "idle stop is off (IDLE_STOP_HOURS=0)"
    )
    stage.services.config = dataclasses.replace(stage.services.config, idle_stop_hours=24)
    run = _first_version(stage, client, "dogs")
    stage.notifications()
    soon = datetime.now(timezone.utc) + timedelta(hours=1)
    assert invoke(client, "stop_idle_endpoints", _tick(soon)) == "stopped 0 idle endpoint(s)", (
        "deployed within the window"
    )
    later = datetime.now(timezone.utc) + timedelta(hours=30)
    stage.cloudwatch.put_metric_data(
        Namespace="AWS/SageMaker",
        MetricData=[
            {
                "MetricName": "Invocations",
                "Value": 3.0,
                "Timestamp": later - timedelta(hours=2),
                "Dimensions": [
                    {"Name": "EndpointName", "Value": "droptrain-dev-dogs"},
                    {"Name": "VariantName", "Value": "AllTraffic"},
                ],
            }
        ],
    )
    assert invoke(client, "stop_idle_endpoints", _tick(later)) == "stopped 0 idle endpoint(s)", (
        "invoked within the window"
    )
    idle = later + timedelta(hours=30)
    assert invoke(client, "stop_idle_endpoints", _tick(idle)) == "stopped 1 idle endpoint(s): dogs"
    assert stage.sagemaker.list_endpoints()["Endpoints"] == []
    assert stage.sagemaker.describe_endpoint_config(EndpointConfigName=run)["EndpointConfigName"] == run, (
        "its config stays"
    )
    stopped = stage.notifications()
    assert [n["event"] for n in stopped] == ["deployment.stopped"] and stopped[0]["detail"]["idle_hours"] == 24

    stage.runtime_stub.add_client_error(
        "invoke_endpoint", "ValidationError", "Endpoint droptrain-dev-dogs of account 123456789012 not found."
    )
    response = client.http.post(
        "/predict/dogs", headers={"Content-Type": "image/jpeg"}, body=b"\xff\xd8\xff\xe0" + bytes(50)
    )
    assert response.status_code == 503 and response.json_body["error"]["code"] == "model_sleeping"
    assert stage.sagemaker.describe_endpoint(EndpointName="droptrain-dev-dogs")["EndpointConfigName"] == run
    woke = stage.notifications()
    assert [n["event"] for n in woke] == ["deployment.started"] and "waking" in woke[0]["detail"]["action"]
    group = stage.sagemaker.list_model_package_groups()["ModelPackageGroupSummaryList"][0]["ModelPackageGroupArn"]
    assert "droptrain:sleeping-run" not in {t["Key"] for t in stage.sagemaker.list_tags(ResourceArn=group)["Tags"]}


def test_invocations_are_read_from_cloudwatch_as_botocore_models_the_call():
    from datetime import datetime, timedelta, timezone

    from chalice_app.adapters.cloudwatch import CloudWatchAdapter

    client = boto3.client("cloudwatch", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")
    end = datetime(2026, 11, 24, 12, tzinfo=timezone.utc)
    start = end - timedelta(hours=24)
    expected = {
        "Namespace": "AWS/SageMaker",
        "MetricName": "Invocations",
        "StartTime": start,
        "EndTime": end,
        "Period": 3600,
        "Statistics": ["Sum"],
        "Dimensions": [
            {"Name": "EndpointName", "Value": "droptrain-dev-dogs"},
            {"Name": "VariantName", "Value": "AllTraffic"},
        ],
    }
    with Stubber(client) as stub:
        stub.add_response(
            "get_metric_statistics",
            {"Label": "Invocations", "Datapoints": [{"Timestamp": end, "Sum": 4.0}, {"Timestamp": start, "Sum": 3.0}]},
            expected,
        )
        assert CloudWatchAdapter(client).invocations("droptrain-dev-dogs", start, end) == 7.0
        stub.assert_no_pending_responses()


def test_a_slower_backbone_forecasts_longer_jobs_and_a_tuned_one_its_slowest_choice():
    def minutes(**env) -> tuple[float, str]:
        config = make_config(TRAINING_INSTANCE_TYPE="ml.g4dn.xlarge", **env)
        answer = cost.forecast(config, 1_000_000, cost.plan(config, 1_000_000, None, 4), None, None)
        return answer["minutes_per_job"], answer["throughput"]

    resnet, source = minutes()
    assert "measured on a CPU" not in source, "ResNet-50's own row"
    vit, source = minutes(STATIC_HYPERPARAMETERS=json.dumps({"arch": "vit_b_16"}))
    overhead = cost.JOB_OVERHEAD_SECONDS / 60
    assert vit - overhead == pytest.approx((resnet - overhead) / cost.ARCH_SPEED["vit_b_16"][0], rel=0.02)
    assert f"vit_b_16 at {cost.ARCH_SPEED['vit_b_16'][0]:.2f}x ResNet-50's speed" in source
    tuned, source = minutes(TUNING_RANGES=json.dumps({"arch": ["regnet_y_1_6gf", "efficientnet_v2_s"]}))
    assert "efficientnet_v2_s" in source and tuned > resnet, "the budget is planned for the slowest choice"


def test_every_architecture_train_py_offers_has_a_measured_speed():
    from chalice_app import config as config_module

    assert set(cost.ARCH_SPEED) == set(config_module.ARCHS)
