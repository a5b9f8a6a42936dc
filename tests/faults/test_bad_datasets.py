"""Bad datasets and bad settings: archive bombs and unsafe tar members refused before any job runs, a
dataset every trial would fail on stops its tuning job with the reason, a small search space is not
trained twice, and a webhook that is slow or not http(s) holds nothing up."""

from __future__ import annotations

import http.server
import io
import json
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import pytest
from local.test_local_sagemaker import DATASET, Executor, config

from chalice_app import names, validation
from chalice_app import sagemaker_requests as requests
from droptrain.local.aws.bucket import LocalBucket
from droptrain.local.aws.notify import LocalPublisher, WebhookError
from droptrain.local.runtime import LocalRuntime
from helpers import DEADLINE
from trainlib.archives import extract_archive
from trainlib.errors import ArchiveError

BUCKET = "droptrain-local"


def _check(tmp_path: Path, key: str, data: bytes, volume_size_gb: int = 50) -> validation.DatasetReport:
    bucket = LocalBucket(tmp_path / "bucket", BUCKET)
    bucket.put(key, data)
    dataset = names.parse_dataset_key(BUCKET, key, "datasets/")
    return validation.check_archive(bucket, dataset, len(data), volume_size_gb)


def _valid_members() -> dict[str, bytes]:
    return {f"train/{c}/{i}.jpg": b"\xff\xd8\xff" + bytes(2000) for c in ("a", "b") for i in range(3)}


def _zip(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


# -- archive bombs -------------------------------------------------------------------------------------


def test_a_zip_bomb_is_refused_from_its_central_directory(tmp_path):
    bomb = _zip({**_valid_members(), "train/a/huge.jpg": bytes(200 * 1024**2)})  # 200 MB of zeros in ~200 KB
    report = _check(tmp_path, "datasets/bomb.zip", bomb)
    assert not report.ok and any("times its size" in r and "archive bomb" in r for r in report.reasons), report.reasons


def test_a_zip_that_claims_more_than_the_training_volume_holds_is_refused(tmp_path):
    honest = _zip(_valid_members(), zipfile.ZIP_STORED)
    # The central directory says one member is 2 GiB: what the volume is checked against.
    entry = honest.rindex(b"PK\x01\x02")
    lying = honest[: entry + 24] + (2 * 1024**3).to_bytes(4, "little") + honest[entry + 28 :]
    report = _check(tmp_path, "datasets/claims.zip", lying, volume_size_gb=1)
    assert any("more than the training volume can hold" in r for r in report.reasons), report.reasons
    assert _check(tmp_path, "datasets/fine.zip", honest, volume_size_gb=1).ok


def test_extraction_stops_a_bomb_whatever_its_headers_say(tmp_path):
    archive = tmp_path / "bomb.zip"
    archive.write_bytes(_zip({"train/a/huge.jpg": bytes(50 * 1024**2)}))
    with pytest.raises(ArchiveError, match="100 times the archive's size"):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists(), "the partial extraction is removed"


def _tar(members: list[tarfile.TarInfo], data: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tf:
        for name, body in data.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tf.addfile(info, io.BytesIO(body))
        for info in members:
            tf.addfile(info)
    return buffer.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize(
    "member",
    [
        _member("../escape.jpg"),
        _member("/etc/cron.d/job"),
        _member("train/a/link.jpg", tarfile.SYMTYPE, "/etc/passwd"),
        _member("train/a/hard.jpg", tarfile.LNKTYPE, "../../outside"),
        _member("train/a/fifo", tarfile.FIFOTYPE),
    ],
    ids=["dotdot", "absolute", "symlink", "hardlink", "fifo"],
)
@pytest.mark.parametrize("suffix, mode", [(".tar.gz", "w:gz"), (".tar", "w")])
def test_unsafe_tar_members_are_refused_at_validation(tmp_path, member, suffix, mode):
    report = _check(tmp_path, f"datasets/pets{suffix}", _tar([member], _valid_members(), mode))
    assert not report.ok and report.reasons[0].startswith("the archive has unsafe members"), report.reasons
    assert member.name in report.reasons[0]


def test_a_tar_is_validated_like_a_zip(tmp_path):
    report = _check(tmp_path, "datasets/pets.tgz", _tar([], _valid_members()))
    assert report.ok and report.classes == ["a", "b"] and report.checked == "tar member headers"
    one_class = {k: v for k, v in _valid_members().items() if "/a/" in k}
    assert "at least 2 classes" in _check(tmp_path, "datasets/one.tar.gz", _tar([], one_class)).reasons[0]


def test_an_archive_named_dot_dot_zip_is_rejected(tmp_path, ray_serve):
    runtime = LocalRuntime(tmp_path / "home", say=lambda m: None, serving=ray_serve)
    runtime.bucket.put("datasets/..zip", _zip(_valid_members()))
    runtime.start(serve_api=False, watch=False)
    try:
        assert runtime.scan() == 1
        deadline = time.monotonic() + DEADLINE
        while not runtime.notifications() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        runtime.stop()
    (note,) = runtime.notifications()
    assert note["message"]["event"] == "dataset.rejected" and "not a dataset name" in note["subject"]
    assert list(runtime.store.names("tuning-job")) == []


# -- failures every trial would repeat -----------------------------------------------------------------


def test_a_dataset_every_trial_fails_on_stops_the_tuning_job_with_its_reason(tmp_path, ray_serve):
    data = tmp_path / "garbage"
    for cls in ("cat", "dog"):
        (data / "train" / cls).mkdir(parents=True)
        for i in range(3):  # names and sizes pass validation; not one of them decodes
            (data / "train" / cls / f"{i}.jpg").write_bytes(b"\xff\xd8\xff" + b"not a jpeg at all" * 20)
    # The audit would reject this dataset first (tests/training/test_audit.py): here, the trials meet it.
    env = {"MAX_TUNING_JOBS": "4", "MAX_PARALLEL_JOBS": "1", "AUDIT": "false"}
    runtime = LocalRuntime(tmp_path / "home", env=env, say=lambda m: None, serving=ray_serve)
    runtime.start(serve_api=False)
    try:
        runtime.upload(data, "garbage")
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline and "tuning.failed" not in [
            n["message"]["event"] for n in runtime.notifications()
        ]:
            time.sleep(0.2)
    finally:
        runtime.stop()
    events = [n["message"] for n in runtime.notifications()]
    assert [e["event"] for e in events] == ["dataset.accepted", "tuning.started", "tuning.failed"]
    failed = events[-1]
    assert (
        failed["status"] == "Stopped"
        and "DatasetError: the train split has no readable images" in failed["detail"]["reason"]
    )
    trials = runtime.sagemaker.list_trials(failed["run_id"])
    assert len(trials) <= 2, "stopped after the first trial, not retried four times"
    assert trials[0]["TrainingJobStatus"] == "Failed"


def test_a_small_search_space_is_not_trained_twice(tmp_path, monkeypatch):
    executor = Executor(tmp_path)
    monkeypatch.setenv("FAKE_LOG", str(executor.log))
    request = requests.tuning_job_request(
        config(TUNING_STRATEGY="Random", MAX_TUNING_JOBS=5, MAX_PARALLEL_JOBS=1), "pets-1a2b3c4d", DATASET
    )
    # Three configurations in all (epochs 3, 4 or 5), five trials allowed: three run.
    request["HyperParameterTuningJobConfig"]["ParameterRanges"] = {
        "IntegerParameterRanges": [{"Name": "epochs", "MinValue": "3", "MaxValue": "5", "ScalingType": "Linear"}]
    }
    try:
        executor.sagemaker.create_tuning_job(request)
        executor.wait_for("SageMaker HyperParameter Tuning Job State Change", "pets-1a2b3c4d")
    finally:
        executor.sagemaker.stop()
    trials = executor.sagemaker.list_trials("pets-1a2b3c4d")
    assert sorted(t["TunedHyperParameters"]["epochs"] for t in trials) == ["3", "4", "5"]
    assert executor.sagemaker.describe_tuning_job("pets-1a2b3c4d")["HyperParameterTuningJobStatus"] == "Completed"


# -- the webhook ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["file:///tmp/droptrain-fifo", "data:text/plain,hello", "ftp://example.com/x", "http://", "gopher://x"]
)
def test_only_http_webhooks_are_taken(tmp_path, url):
    with pytest.raises(WebhookError, match="http:// or https://"):
        LocalPublisher(tmp_path / "notes.jsonl", say=lambda m: None, webhook=url)


def test_a_webhook_that_hangs_holds_up_nothing_and_redirects_stay_on_http(tmp_path):
    release, received = threading.Event(), []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path == "/hang":
                release.wait(30)
                received.append(body["message"]["event"])
                self.send_response(302)  # then sends the next one elsewhere: a file, which is not followed
                self.send_header("Location", f"file://{tmp_path / 'secret'}")
            else:
                self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    publisher = LocalPublisher(
        tmp_path / "notes.jsonl",
        say=lambda m: None,
        webhook=f"http://127.0.0.1:{server.server_address[1]}/hang",
        timeout=10,
    )
    try:
        for event in ("dataset.accepted", "tuning.started"):
            publisher.publish(
                "arn:aws:sns:local:000000000000:droptrain-local",
                f"droptrain {event}: x",
                json.dumps({"event": event}),
                {"event": event},
            )
        # Both published (in the file) while the webhook still holds the first: nobody waited on it.
        assert [
            json.loads(line)["message"]["event"] for line in (tmp_path / "notes.jsonl").read_text().splitlines()
        ] == ["dataset.accepted", "tuning.started"]
        assert received == []
        release.set()
        publisher.flush(20)
        assert received == ["dataset.accepted", "tuning.started"], "delivered in order once the webhook answered"
    finally:
        server.shutdown()
