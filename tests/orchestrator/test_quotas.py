"""The deploy's quota check against Service Quotas' model (botocore's Stubber validates each request)."""

from __future__ import annotations

import boto3
from botocore.stub import Stubber

from droptrain import quotas

STAGE = {
    "TRAINING_INSTANCE_TYPE": "ml.g4dn.xlarge",
    "MAX_PARALLEL_JOBS": "2",
    "INFERENCE_INSTANCE_TYPE": "ml.g5.xlarge",
    "INFERENCE_INSTANCE_COUNT": "2",
    "AUDIT_INSTANCE_TYPE": "ml.m5.xlarge",
}


def _quota(name: str, code: str, value: float) -> dict:
    return {"ServiceCode": "sagemaker", "QuotaName": name, "QuotaCode": code, "Value": value, "Adjustable": True}


def _client(pages: list[list[dict]]) -> tuple[object, Stubber]:
    client = boto3.client("service-quotas", region_name="eu-west-1", aws_access_key_id="k", aws_secret_access_key="s")
    stub = Stubber(client)
    for number, page in enumerate(pages):
        response = {"Quotas": page, **({"NextToken": f"t{number}"} if number < len(pages) - 1 else {})}
        expected = {"ServiceCode": "sagemaker", **({"NextToken": f"t{number - 1}"} if number else {})}
        stub.add_response("list_service_quotas", response, expected)
    return client, stub


def test_a_new_accounts_zero_gpu_quotas_are_named_with_what_to_request():
    client, stub = _client(
        [
            [
                _quota("ml.g4dn.xlarge for training job usage", "L-TRAIN", 0),
                _quota("ml.m5.xlarge for processing job usage", "L-PROC", 4),
            ],
            [_quota("ml.g5.xlarge for endpoint usage", "L-ENDP", 2)],  # a second page: all of them are read
        ]
    )
    said: list[str] = []
    with stub:
        lines = quotas.check(client, STAGE, said.append)
    stub.assert_no_pending_responses()
    assert lines == said and len(lines) == 2
    assert lines[0].startswith("quota 'ml.g4dn.xlarge for training job usage' is 0 in this account; the stage needs 2")
    assert lines[0].endswith("--quota-code L-TRAIN --desired-value 2")
    assert "'ml.g5.xlarge for endpoint usage' is 2" in lines[1] and "needs 4" in lines[1], "blue/green: both fleets"


def test_spot_has_its_own_quota_and_serverless_needs_no_instances():
    client, stub = _client(
        [
            [
                _quota("ml.g4dn.xlarge for training job usage", "L-TRAIN", 10),
                _quota("ml.g4dn.xlarge for spot training job usage", "L-SPOT", 1),
            ]
        ]
    )
    stage = {**STAGE, "USE_SPOT": "true", "INFERENCE_INSTANCE_TYPE": "serverless", "AUDIT": "false"}
    with stub:
        lines = quotas.check(client, stage, lambda line: None)
    assert [line.split("'")[1] for line in lines] == ["ml.g4dn.xlarge for spot training job usage"]
    assert [name for name, _, _ in quotas.needs(stage)] == ["ml.g4dn.xlarge for spot training job usage"]
    # A malformed count is the config's to name (at load, in one line): the check counts the default.
    assert quotas.needs({**stage, "MAX_PARALLEL_JOBS": "two"})[0][1] == 2


def test_quotas_that_cannot_be_read_are_one_line_and_the_deploy_goes_on():
    client = boto3.client("service-quotas", region_name="eu-west-1", aws_access_key_id="k", aws_secret_access_key="s")
    stub = Stubber(client)
    stub.add_client_error("list_service_quotas", "AccessDeniedException", "not allowed")
    said: list[str] = []
    with stub:
        lines = quotas.check(client, STAGE, said.append)
    assert len(said) == 1 and said[0].startswith("could not read the SageMaker quotas") and "AccessDenied" in said[0]
    assert lines == said


def test_training_on_several_instances_needs_them_all_at_once():
    wide_trials = quotas.needs({**STAGE, "TRAINING_INSTANCE_COUNT": "4"})[0]
    assert wide_trials[1] == 8 and "2 tuning trials at once of 4 instance(s)" in wide_trials[2]
    wide_final = quotas.needs({**STAGE, "TRAINING_INSTANCE_COUNT": "1", "FINAL_INSTANCE_COUNT": "16"})[0]
    assert wide_final[0] == "ml.g4dn.xlarge for training job usage"
    assert wide_final[1] == 16 and "final job" in wide_final[2]
