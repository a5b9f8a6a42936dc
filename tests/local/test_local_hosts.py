"""A training job of several instances in the local SageMaker: one host per instance, each run by the
PyTorch training container's own toolkit (its torchrun launcher), on loopback addresses of the job's
own. Fed the orchestrator's real requests and the real train.py."""

from __future__ import annotations

import json
import os
import re
import socket
import tarfile
import threading
import time
from pathlib import Path

import psutil
import pytest
from training.test_distributed import SITECUSTOMIZE

from chalice_app import audit_requests
from chalice_app import config as config_module
from chalice_app import sagemaker_requests as requests
from droptrain import sourcedir
from droptrain.local.aws.bucket import LocalBucket
from droptrain.local.runtime import BUCKET, local_environment
from droptrain.local.sagemaker import LocalSageMaker, hosts
from droptrain.local.store import Store
from helpers import DEADLINE, TRAINING_DIR
from trainlib.predictor import Classifier, decode

# Head mode on a random backbone, as tests/training/test_distributed.py: one host and two see the same
# global batches, so their losses differ only in the order sums are taken.
HEAD = {"arch": "resnet18", "weights": "none", "train-mode": "head", "image-size": "48", "epochs": "3"}
HEAD |= {"batch-size": "16", "lr": "0.01", "workers": "0", "profile": "off"}
EPOCH = re.compile(r"^epoch=(\d+) train_loss=([0-9.]+)")


class Cluster:
    """A local SageMaker over a bucket holding the tiny dataset and the real training code."""

    def __init__(self, tmp: Path, dataset: Path, warm):
        self.bucket = LocalBucket(tmp / "bucket", BUCKET)
        for path in sorted(dataset.rglob("*.jpg")):
            self.bucket.put_file(f"datasets/pets/{path.relative_to(dataset)}", path)
        code, _ = sourcedir.build(TRAINING_DIR, include_requirements=False)
        self.bucket.put(local_environment()["SOURCE_DIR_S3_URI"].removeprefix(f"s3://{BUCKET}/"), code)
        self.ended: dict[str, threading.Event] = {}
        self.jobs = tmp / "jobs"
        self.sagemaker = LocalSageMaker(
            Store(tmp / "state.db"), self.bucket, self.jobs, self._emit, endpoints=None, warm=warm
        )

    def _emit(self, event: dict) -> None:
        detail = event["detail"]
        for kind in ("TrainingJob", "ProcessingJob"):
            if detail.get(f"{kind}Status") in ("Completed", "Failed", "Stopped"):
                self.ended.setdefault(detail[f"{kind}Name"], threading.Event()).set()

    def process(self, request: dict) -> dict:
        name = request["ProcessingJobName"]
        ended = self.ended.setdefault(name, threading.Event())
        assert self.sagemaker.create_processing_job(request)
        assert ended.wait(DEADLINE), f"{name} did not end"
        return self.sagemaker.describe_processing_job(name)

    def train(self, run: str, instances: int, environment: dict[str, str] | None = None) -> dict:
        """The final job of ``run`` on ``instances`` instances, from the orchestrator's request, to its end."""
        config = config_module.load(local_environment({"FINAL_INSTANCE_COUNT": str(instances)}))
        static = {**requests.static_hyperparameters(config), **HEAD}
        request = requests.final_training_request(config, run, f"s3://{BUCKET}/datasets/pets/", static, {})
        request["Environment"] |= environment or {}
        # What these tests judge is the hosts; the exports (trainlib.export: seconds of tracing) are tested there.
        request["HyperParameters"]["export"] = "off"
        name = request["TrainingJobName"]
        ended = self.ended.setdefault(name, threading.Event())
        assert self.sagemaker.create_training_job(request)
        assert ended.wait(DEADLINE), f"{name} did not end"
        return self.sagemaker.describe_training_job(name)

    def log(self, name: str) -> list[str]:
        return (self.jobs / name / "job.log").read_text().splitlines()


@pytest.fixture(scope="module")
def cluster(tiny_dataset, tmp_path_factory, shared_warm):
    local = Cluster(tmp_path_factory.mktemp("hosts"), tiny_dataset, shared_warm)
    yield local
    local.sagemaker.stop()


def _losses(lines: list[str]) -> list[float]:
    return [float(m.group(2)) for m in map(EPOCH.match, lines) if m]


def test_two_instances_train_as_two_hosts_as_one_does_and_the_artifact_serves(cluster, tiny_dataset, tmp_path):
    one = cluster.train("one-1a2b3c4d", 1)
    two = cluster.train("two-1a2b3c4d", 2)
    assert (one["TrainingJobStatus"], two["TrainingJobStatus"]) == ("Completed", "Completed"), two.get("FailureReason")
    lines = cluster.log("two-1a2b3c4d-final")
    commands = [line for line in lines if line.lstrip("[.0123456789] ").startswith("torchrun --nnodes 2")]
    ranks = sorted(re.search(r"--node_rank (\d)", c).group(1) for c in commands)
    masters = {re.search(r"--master_addr (\S+)", c).group(1) for c in commands}
    assert ranks == ["0", "1"] and len(masters) == 1 and next(iter(masters)).startswith("127."), commands
    assert "distributed: world size 2, rank 0, local rank 0, backend gloo" in lines
    assert any(line.endswith("] distributed: world size 2, rank 1, local rank 0, backend gloo") for line in lines)
    assert not any("distributed:" in line for line in cluster.log("one-1a2b3c4d-final")), "one host: no launcher"
    losses = _losses(cluster.log("one-1a2b3c4d-final")), _losses(lines)
    assert len(losses[0]) == len(losses[1]) == 3, "one metric line per epoch, whatever the hosts"
    assert losses[1] == pytest.approx(losses[0], rel=0.02)
    others, deadline = cluster.jobs / "two-1a2b3c4d-final" / "hosts", time.monotonic() + DEADLINE
    while others.exists() and time.monotonic() < deadline:  # removed just after the job's end is told
        time.sleep(0.1)
    assert not others.exists(), "the other hosts' folders went with the job"

    with tarfile.open(cluster.bucket.path_of_uri(two["ModelArtifacts"]["S3ModelArtifacts"])) as tar:
        tar.extractall(tmp_path / "model", filter="data")
    classifier = Classifier.load(tmp_path / "model", device="cpu")
    image = sorted((tiny_dataset / "test").rglob("*.jpg"))[0]
    (answer,) = classifier.predict([decode(image.read_bytes())])
    classes = sorted(p.name for p in (tiny_dataset / "train").iterdir())
    assert answer["predictions"][0]["label"] in classes


def test_a_failing_host_ends_the_job_with_its_reason_and_leaves_nothing_running(cluster, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    # Every host's processes load the hook; only rank 1 (the second host's) fails, on its first image.
    failed = cluster.train("fail-1a2b3c4d", 2, {"PYTHONPATH": str(site), "FAIL_RANK": "1"})
    assert failed["TrainingJobStatus"] == "Failed"
    assert "DatasetError: rank 1 cannot read" in failed["FailureReason"], failed["FailureReason"]
    folder, deadline = str(cluster.jobs / "fail-1a2b3c4d-final"), time.monotonic() + DEADLINE
    while (left := _working_in(folder)) and time.monotonic() < deadline:  # killed ones are reaped a moment later
        time.sleep(0.1)
    assert left == [], "no host's toolkit, torchrun or train.py outlives the job"


def _working_in(folder: str) -> list[psutil.Process]:
    out = []
    for process in psutil.process_iter(["cwd", "status"]):
        if (process.info["cwd"] or "").startswith(folder) and process.info["status"] != psutil.STATUS_ZOMBIE:
            out.append(process)
    return out


def test_an_audit_scanned_by_three_instances_finds_a_copy_that_two_of_them_read(cluster):
    """ShardedByS3Key deals the dataset's objects to the scan's instances; the merge job audits them all."""
    prefix = "datasets/pets/"
    keys = sorted(key for key, _ in cluster.bucket.list_objects(BUCKET, prefix))
    source = next(k for k in keys if k.startswith(prefix + "test/"))
    label = source.split("/")[3]
    for n in range(10):  # a name that the deal gives to another instance than the original's
        copy = f"{prefix}train/{label}/copy-{n}.jpg"
        dealt = sorted([*keys, copy])
        if dealt.index(copy) % 3 != dealt.index(source) % 3:
            break
    cluster.bucket.put_file(copy, cluster.bucket.path(source))
    config = config_module.load(local_environment())
    run = "pets-5ca1ab1e"
    scan = cluster.process(audit_requests.audit_job_request(config, run, f"s3://{BUCKET}/{prefix}", None, 3))
    assert scan["ProcessingJobStatus"] == "Completed", scan.get("FailureReason")
    shards = [key for key, _ in cluster.bucket.list_objects(BUCKET, f"runs/{run}/reports/audit-shards/")]
    assert len(shards) == 3, shards
    merge = cluster.process(audit_requests.audit_merge_request(config, run, []))
    assert merge["ProcessingJobStatus"] == "Completed", merge.get("FailureReason")
    report = json.loads(cluster.bucket.path(f"runs/{run}/reports/audit.json").read_text())
    assert report["images"] == len(keys) + 1, "every instance's share, once"
    pairs = [{f["path"] for f in d["files"]} for d in report["duplicates"] if d["kind"] == "exact"]
    assert {source.removeprefix(prefix), copy.removeprefix(prefix)} in pairs
    assert source.removeprefix(prefix) in report["leaked"]


def test_jobs_running_at_once_get_loopback_blocks_of_their_own():
    first = hosts.loopback_hosts(3, "pets-1a2b3c4d-001-aaaa")
    assert first == [first[0].rsplit(".", 1)[0] + f".{n}" for n in (1, 2, 3)] and first[0].startswith("127.")
    with socket.socket() as master:  # the first job's rendezvous is listening
        master.bind((first[0], hosts.MASTER_PORT))
        master.listen()
        assert hosts.loopback_hosts(3, "pets-1a2b3c4d-001-aaaa") != first, "its block is taken: another one"


def test_each_host_gets_a_gpu_or_every_host_the_cpu():
    machine = hosts.Machine(gpus=2)
    two = machine.take(2)
    assert two == [0, 1] and [machine.part(1, g)["CUDA_VISIBLE_DEVICES"] for g in two] == ["0", "1"]
    # No GPU left for a second job of two hosts: both on the CPU, never one on a GPU and one beside it.
    starved = machine.take(2)
    assert starved == [hosts.ON_CPU] * 2
    assert machine.part(2, starved[0]) == {
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": str(max(1, os.cpu_count() // 2)),
    }
    assert machine.take(1) == [None], "one host shares what the driver gives it, as before"
    machine.give_back(two)
    assert machine.take(2) == [0, 1]
    assert hosts.Machine(gpus=0).take(2) == [None, None], "no GPU at all: the cores are shared"
