"""The local Batch Transform job's own rules, over a stand-in for Ray Serve: what it sends, where it writes,
and when it fails or stops (the real serving application is the end-to-end test's)."""

from __future__ import annotations

import io
import json
import tarfile
import threading

import pytest

from chalice_app import batch_requests, names
from droptrain.local.aws.bucket import LocalBucket
from droptrain.local.sagemaker.transform import TransformJobs
from droptrain.local.store import Store
from orchestrator.test_requests import make_config

BUCKET = "droptrain-data-dev"
RUN = "pets-1a2b3c4d"


class _Serving:
    """Answers each record with its own length, or ``status`` for a body that ``refuse`` names."""

    def __init__(self, refuse: bytes = b"", before_answer=lambda: None):
        self.calls: list[tuple[str, bytes, str, str]] = []
        self.deployed: list[str] = []
        self.refuse, self.before_answer = refuse, before_answer
        self.lock = threading.Lock()

    def deploy(self, name, model_dir):
        assert (model_dir / "model.json").is_file(), "the archive is extracted before it is deployed"
        self.deployed.append(name)

    def delete(self, name):
        self.deployed.remove(name)

    def call(self, name, body, content_type, accept):
        self.before_answer()
        with self.lock:
            self.calls.append((name, body, content_type, accept))
        if self.refuse and body == self.refuse:
            return 400, {"error": {"code": "invalid_image"}}
        return 200, {"predictions": [], "abstained": None, "error": None, "size": len(body)}


@pytest.fixture
def setting(tmp_path):
    store, bucket = Store(tmp_path / "state.db"), LocalBucket(tmp_path / "bucket", BUCKET)
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        info = tarfile.TarInfo("model.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    bucket.put(f"runs/{RUN}/final/model.tar.gz", archive.getvalue())
    store.insert(
        "model",
        RUN,
        {"ModelName": RUN, "PrimaryContainer": {"ModelDataUrl": f"s3://{BUCKET}/runs/{RUN}/final/model.tar.gz"}},
    )
    for key in ("a.jpg", "sub/b.png", "c.jpg"):
        bucket.put(f"batch/in/{key}", key.encode() * 3)
    events: list[dict] = []
    return store, bucket, events, tmp_path


def _job(setting, serving, keys=("a.jpg", "sub/b.png", "c.jpg"), run=RUN, token="0123abcd"):
    store, bucket, events, tmp_path = setting
    config = make_config()
    name = names.batch_job_name(config.endpoint("pets"), token)
    bucket.put(f"runs/batch/{name}/manifest.json", batch_requests.manifest(BUCKET, "batch/in/", list(keys)))
    jobs = TransformJobs(store, bucket, tmp_path / "jobs", events.append, lambda: serving, threading.Event())
    assert jobs.create(batch_requests.transform_job_request(config, name, run, "pets"))
    return jobs, name


def test_each_object_is_one_record_and_its_answer_lands_where_sagemaker_writes_it(setting):
    serving = _Serving()
    jobs, name = _job(setting, serving)
    assert jobs.run(name) == "Completed"
    _, bucket, events, _ = setting
    assert sorted(body for _, body, _, _ in serving.calls) == sorted(
        k.encode() * 3 for k in ("a.jpg", "sub/b.png", "c.jpg")
    )
    assert {(ct, accept) for _, _, ct, accept in serving.calls} == {
        ("application/x-image", batch_requests.BATCH_ACCEPT)
    }
    for key in ("a.jpg", "sub/b.png", "c.jpg"):
        answer = json.loads(bucket.get(BUCKET, f"runs/batch/{name}/out/{key}.out"))
        assert answer["size"] == len(key) * 3
    assert serving.deployed == [], "the job's application is gone when it ends"
    (event,) = events
    assert event["detail-type"] == "SageMaker Transform Job State Change"
    assert event["detail"]["TransformJobStatus"] == "Completed" and event["detail"]["TransformJobName"] == name


def test_a_record_the_model_refuses_fails_the_job_as_on_sagemaker(setting):
    serving = _Serving(refuse=b"sub/b.png" * 3)
    jobs, name = _job(setting, serving)
    assert jobs.run(name) == "Failed"
    described = jobs.describe(name)
    assert "400" in described["FailureReason"] and "batch/in/sub/b.png" in described["FailureReason"]


def test_a_missing_input_or_model_fails_the_job_saying_which(setting):
    jobs, name = _job(setting, _Serving(), keys=("a.jpg", "nope.jpg"))
    assert jobs.run(name) == "Failed" and "batch/in/nope.jpg" in jobs.describe(name)["FailureReason"]
    jobs, name = _job(setting, _Serving(), run="other-00000000", token="4567cdef")
    assert jobs.run(name) == "Failed" and "Could not find model other-00000000" in jobs.describe(name)["FailureReason"]


def test_a_stop_between_records_ends_the_job_stopped(setting):
    jobs: list[TransformJobs] = []
    name_box: list[str] = []
    serving = _Serving(before_answer=lambda: jobs[0].stop(name_box[0]))
    job, name = _job(setting, serving)
    jobs.append(job)
    name_box.append(name)
    assert job.run(name) == "Stopped"
    assert serving.deployed == []
