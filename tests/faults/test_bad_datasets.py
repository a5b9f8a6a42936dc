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
from helpers import DEADLINE, png_header_only
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


def test_an_archive_named_dot_dot_zip_is_rejected(tmp_path, ray_serve, shared_warm):
    runtime = LocalRuntime(tmp_path / "home", say=lambda m: None, serving=ray_serve, warm=shared_warm)
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


def test_a_dataset_every_trial_fails_on_stops_the_tuning_job_with_its_reason(tmp_path, ray_serve, shared_warm):
    data = tmp_path / "garbage"
    for cls in ("cat", "dog"):
        (data / "train" / cls).mkdir(parents=True)
        for i in range(3):  # names and sizes pass validation; not one of them decodes
            (data / "train" / cls / f"{i}.jpg").write_bytes(b"\xff\xd8\xff" + b"not a jpeg at all" * 20)
    # The audit would reject this dataset first (tests/training/test_audit.py): here, the trials meet it.
    env = {"MAX_TUNING_JOBS": "4", "MAX_PARALLEL_JOBS": "1", "AUDIT": "false"}
    runtime = LocalRuntime(tmp_path / "home", env=env, say=lambda m: None, serving=ray_serve, warm=shared_warm)
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


def test_a_small_search_space_is_not_trained_twice(tmp_path, monkeypatch, shared_warm):
    executor = Executor(tmp_path, shared_warm)
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


# -- datasets that failed without saying why ----------------------------------------------------------


def _jpeg(colour: tuple[int, int, int], seed: int) -> bytes:
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (48, 48, 3), dtype=np.uint8)
    pixels[:24] = colour
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG")
    return buffer.getvalue()


def test_an_image_past_the_decompression_bomb_limit_is_skipped_and_counted(tmp_path):
    from trainlib.datasets import discover

    for label in ("cat", "dog"):
        for i in range(4):
            (tmp_path / "train" / label).mkdir(parents=True, exist_ok=True)
            (tmp_path / "train" / label / f"{i}.jpg").write_bytes(_jpeg((200, 0, 0), i))
    (tmp_path / "train" / "cat" / "huge.png").write_bytes(png_header_only(20_000, 20_000))  # 400 MP

    splits = discover(tmp_path)
    assert [p.name for p in splits.unreadable] == ["huge.png"]
    assert all(path.name != "huge.png" for split in (splits.train, splits.valid, splits.test) for path, _ in split)


def test_a_dataset_of_unreadable_files_says_they_could_not_be_read(tmp_path):
    from trainlib import audit

    for label in ("cat", "dog"):
        (tmp_path / "train" / label).mkdir(parents=True)
        for i in range(6):
            (tmp_path / "train" / label / f"{i}.jpg").write_bytes(b"\xff\xd8\xff" + bytes(300))
    report = audit.findings(audit.scan(tmp_path))
    (few,) = [b for b in report["blocking"] if b.startswith("fewer than 2 classes")]
    assert "12 files could not be read as JPEG or PNG images, e.g. train/cat/0.jpg:" in few, few


def test_two_classes_holding_the_same_images_are_refused(tmp_path):
    from trainlib import audit

    for label, colour in (("cat", (200, 0, 0)), ("kitten", (200, 0, 0)), ("dog", (0, 0, 200))):
        (tmp_path / "train" / label).mkdir(parents=True)
        for i in range(6):  # cat and kitten: the very same files
            (tmp_path / "train" / label / f"{i}.jpg").write_bytes(_jpeg(colour, i if label != "dog" else 100 + i))
    report = audit.findings(audit.scan(tmp_path))
    assert report["blocking_kinds"] == ["identical_classes"], report["blocking"]
    assert report["blocking"][0].startswith("classes cat and kitten hold the same images (6 of 6 and 6 of 6")


def test_a_windows_zip_with_backslashes_is_read_as_folders(tmp_path):
    members = {name.replace("/", "\\"): data for name, data in _valid_members().items()}
    report = _check(tmp_path, "datasets/win.zip", _zip(members))
    assert report.reasons == [] and report.classes == ["a", "b"] and report.layout == "splits"
    archive = tmp_path / "win.zip"
    archive.write_bytes(_zip(members))
    root = extract_archive(archive, tmp_path / "out")
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))[0] == "train/a/0.jpg"


def _tar_named(names: list[bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT, encoding="utf-8") as tar:
        for raw in names:
            info = tarfile.TarInfo(raw.decode("utf-8", "surrogateescape"))
            data = b"\xff\xd8\xff" + bytes(2000)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_member_names_that_are_not_utf8_are_refused_naming_them(tmp_path):
    names = [f"train/{c}/{i}.jpg".encode() for c in ("a", "b") for i in range(3)] + [b"train/a/bad\xff.jpg"]
    data = _tar_named(names)
    report = _check(tmp_path, "datasets/latin.tar", data)
    assert report.reasons == ["the archive has member names that are not UTF-8: train/a/bad\\xff.jpg; rename them"]
    archive = tmp_path / "latin.tar"
    archive.write_bytes(data)
    with pytest.raises(ArchiveError, match=r"'train/a/bad\\\\xff.jpg' has a name that is not UTF-8"):
        extract_archive(archive, tmp_path / "out")


def test_an_archive_of_two_datasets_is_refused_not_trained_as_two_classes(tmp_path):
    from trainlib.datasets import discover
    from trainlib.errors import DatasetError

    members = {f"{top}/{name}": data for top in ("one", "two") for name, data in _valid_members().items()}
    report = _check(tmp_path, "datasets/both.zip", _zip(members))
    assert report.reasons and "the top folders one, two each hold their own train/valid/test" in report.reasons[0]
    archive = tmp_path / "both.zip"
    archive.write_bytes(_zip(members))
    with pytest.raises(DatasetError, match="the top folders one, two each hold their own train/ folder"):
        discover(extract_archive(archive, tmp_path / "out"))


def test_a_class_named_like_mathtext_is_drawn_and_a_plot_that_fails_does_not_fail_the_report(tmp_path, caplog):
    from trainlib import report

    evaluation = {"classes": ["$$", "$x^2$"], "confusion_matrix": [[1, 0], [0, 1]], "split": "test"}
    evaluation |= {"accuracy": 0.9, "balanced_accuracy": 0.625, "macro_f1": 0.5}
    page = report.render(
        tmp_path / "report.html", run_id="r", history=[], evaluation=evaluation, verdicts=[], profile={}, findings=[]
    ).read_text()
    assert page.count("data:image/png;base64,") == 1, "the confusion matrix was drawn"
    assert "Held-out evaluation (test split)" in page
    assert "<td>balanced accuracy</td><td>0.6250</td>" in page and "<td>macro-F1</td><td>0.5000</td>" in page
    assert "run inside this training job" in page and "closed to new customers" in page, "where the rules ran"
    broken = {"classes": ["a"], "confusion_matrix": "not a matrix", "split": "test"}
    page = report.render(
        tmp_path / "broken.html", run_id="r", history=[], evaluation=broken, verdicts=[], profile={}, findings=[]
    ).read_text()
    assert "The confusion matrix could not be drawn" in page


# -- a tgz bomb on the event bus -----------------------------------------------------------------------


def test_a_tgz_bomb_is_stopped_at_the_ratio_limit_not_decompressed_whole(tmp_path):
    buffer = io.BytesIO()
    megabyte = bytes(1024 * 1024)
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for i in range(300):  # 300 MiB of zeros: a few hundred KiB compressed
            info = tarfile.TarInfo(f"train/{'ab'[i % 2]}/{i}.jpg")
            info.size = len(megabyte)
            tar.addfile(info, io.BytesIO(megabyte))
    data = buffer.getvalue()
    report = _check(tmp_path, "datasets/bomb.tgz", data)
    assert any("looks like an archive bomb" in reason for reason in report.reasons), report.reasons
    read = sum(sum(counts.values()) for counts in report.counts.values())
    assert read <= validation.MAX_RATIO * len(data) // len(megabyte) + 1 < 300, (read, len(data))


def test_one_slow_upload_holds_up_neither_other_uploads_nor_other_events():
    from droptrain.local.aws.bus import LocalEventBus, Route

    release, seen = threading.Event(), []

    def on_upload(event, context):
        key = event["detail"]["object"]["key"]
        if key == "datasets/bomb.tgz":
            release.wait(DEADLINE)
        seen.append(key)

    def on_job(event, context):
        seen.append(event["detail"]["TrainingJobName"])

    bus = LocalEventBus(
        [
            Route("on_upload", {"source": ["aws.s3"]}, on_upload),
            Route("on_job", {"source": ["aws.sagemaker"]}, on_job),
        ]
    )
    bus.start()
    try:
        for key in ("datasets/bomb.tgz", "datasets/pets.zip"):
            bus.put({"source": "aws.s3", "detail": {"object": {"key": key}}})
        bus.put({"source": "aws.sagemaker", "detail": {"TrainingJobName": "pets-1a2b3c4d-001"}})
        deadline = time.monotonic() + DEADLINE
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sorted(seen) == ["datasets/pets.zip", "pets-1a2b3c4d-001"], "delivered while the bomb is checked"
        assert not bus.wait_idle(0), "the bus is not idle while an upload is being checked"
        release.set()
        assert bus.wait_idle(DEADLINE) and seen[-1] == "datasets/bomb.tgz"
    finally:
        release.set()
        bus.stop()
