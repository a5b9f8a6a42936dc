"""Nothing a key, a name or an event says can reach outside the local stack's home."""

from __future__ import annotations

import os
import time

import pytest

from chalice_app.adapters.errors import AdapterError
from droptrain import cli
from droptrain.local.aws.bucket import InvalidKeyError, LocalBucket
from droptrain.local.runtime import BUCKET, LocalRuntime
from droptrain.local.stage import object_created
from helpers import DEADLINE


@pytest.mark.parametrize(
    "key",
    [
        "../x",
        "datasets/../../x",
        "/etc/passwd",
        "a\\..\\b",
        "a//b",
        "./a",
        "a/./b",
        "..",
        "datasets/..",
        "a/../b/_READY",
        "\0",
    ],
)
def test_keys_that_would_leave_the_folder_are_refused(tmp_path, key):
    bucket = LocalBucket(tmp_path / "bucket", BUCKET)
    with pytest.raises(InvalidKeyError):
        bucket.path(key)
    with pytest.raises(AdapterError):
        bucket.get(BUCKET, key)
    with pytest.raises(AdapterError):
        bucket.put_if_absent(BUCKET, key, b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bucket"], "nothing written beside the bucket"


def test_ordinary_keys_with_dots_are_fine(tmp_path):
    bucket = LocalBucket(tmp_path / "bucket", BUCKET)
    for key in ("datasets/x.y/_READY", "datasets/a..b/1.jpg", "datasets/dogs.tar.gz"):
        bucket.put(key, b"1")
        assert bucket.get(BUCKET, key) == b"1"


def test_links_in_the_bucket_are_neither_listed_nor_followed(tmp_path):
    secret = tmp_path / "outside" / "secret.zip"
    secret.parent.mkdir()
    secret.write_bytes(b"PK\x05\x06" + bytes(18))
    bucket = LocalBucket(tmp_path / "bucket", BUCKET)
    bucket.put("datasets/real/_READY", b"1")
    os.symlink(secret, bucket.root / "datasets" / "stolen.zip")
    os.symlink(secret.parent, bucket.root / "datasets" / "linked-folder")
    assert [k for k, _ in bucket.list_objects(BUCKET, "datasets/")] == ["datasets/real/_READY"]
    for key in ("datasets/stolen.zip", "datasets/linked-folder/secret.zip"):
        with pytest.raises(InvalidKeyError, match="link"):
            bucket.get(BUCKET, key)
    # A listing walks the prefix's own folder: one reached through a link lists nothing, as S3 keys
    # cannot name what lies behind it.
    assert list(bucket.list_objects(BUCKET, "datasets/linked-folder/")) == []
    assert list(bucket.list_objects(BUCKET, "datasets/linked-folder/sec")) == []
    assert [k for k, _ in bucket.list_objects(BUCKET, "datasets/real/")] == ["datasets/real/_READY"]


@pytest.mark.parametrize("name", ["../../escape", "../x", "a/b", ".", "..", ".hidden", "x" * 300])
def test_upload_refuses_bad_names_with_one_line(tmp_path, tiny_dataset, capsys, name):
    home = tmp_path / "home"
    assert cli.main(["upload", str(tiny_dataset), "--name", name, "--home", str(home)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("droptrain upload: ") and "Traceback" not in err[0]
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written == [], f"nothing written anywhere: {written}"


@pytest.mark.parametrize(
    "key", ["datasets/../../outside/_READY", "datasets/../_READY", "datasets/..zip", "datasets/.hidden/_READY"]
)
def test_events_with_traversal_keys_start_nothing(tmp_path, ray_serve, key, shared_warm):
    """Keys a person could not create locally, sent as events anyway (EventBridge passes S3's keys as they are)."""
    runtime = LocalRuntime(tmp_path / "home", say=lambda m: None, serving=ray_serve, warm=shared_warm)
    runtime.start(serve_api=False, watch=False)
    try:
        runtime.bus.put(object_created(key, 22, "0" * 32))
        assert runtime.bus.wait_idle(30)
        time.sleep(0.1)
    finally:
        runtime.stop()
    notes = runtime.notifications()
    assert all(n["message"]["event"] == "dataset.rejected" for n in notes), [n["subject"] for n in notes]
    assert list(runtime.store.names("tuning-job")) == []
    assert not (tmp_path / "outside").exists()


def test_the_runtime_never_reads_a_model_outside_the_bucket(tmp_path, ray_serve, shared_warm):
    runtime = LocalRuntime(tmp_path / "home", say=lambda m: None, serving=ray_serve, warm=shared_warm)
    runtime.sagemaker.create_model(
        {"ModelName": "m", "PrimaryContainer": {"ModelDataUrl": f"s3://{BUCKET}/../../etc/model.tar.gz"}}
    )
    runtime.sagemaker.create_endpoint_config({"EndpointConfigName": "c", "ProductionVariants": [{"ModelName": "m"}]})
    runtime.sagemaker.create_endpoint({"EndpointName": "ep", "EndpointConfigName": "c"})
    runtime.endpoints.join(DEADLINE)
    described = runtime.endpoints.describe("ep")
    assert described["EndpointStatus"] == "Failed" and "cannot be read" in described["FailureReason"]
