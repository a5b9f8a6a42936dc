"""droptrain up's defaults by situation: ImageNet weights from the torch cache (or one download) for
transfer learning, else from scratch at a small size, said once; what the user set always wins."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import os
import tarfile
import threading
import time

import pytest
import torch
from torchvision import models

from droptrain.local import defaults
from droptrain.local.runtime import LocalRuntime
from droptrain.local.settings import for_this_machine, read


def _offline(url, path):
    raise AssertionError(f"no download may be attempted: {url}")


def _unreachable(url, path):
    raise defaults.WeightsDownloadError("Temporary failure in name resolution")


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.chdir(tmp_path)  # no droptrain.toml from the repository
    return tmp_path / "torch"


def test_weights_in_the_torch_cache_train_the_jobs_without_network(
    torch_home, tmp_path, tiny_dataset, ray_serve, shared_warm
):
    # A state dict of the right shape where torch hub keeps resnet18's ImageNet weights, marked so
    # that the trained model shows it came from there (head mode keeps the backbone as loaded).
    fake = models.resnet18().state_dict()
    fake["conv1.weight"] = torch.full_like(fake["conv1.weight"], 0.125)
    target = defaults.cache_path(defaults.weights_url("resnet18"))
    target.parent.mkdir(parents=True)
    torch.save(fake, target)

    said: list[str] = []
    settings = read(None, ["MAX_TUNING_JOBS=1", "AUDIT=false", 'TUNING_RANGES={"epochs": [1, 2]}'])
    for_this_machine(settings, said.append, fetch=_offline, gpus=0)
    assert said == [f"transfer learning: resnet18 with ImageNet weights ({target}), at their input size, head mode"]
    assert settings.env["MAX_PARALLEL_JOBS"] == "1", "never more trials at once than the tuning job has"

    runtime = LocalRuntime(tmp_path / "home", env=settings.env, say=lambda m: None, serving=ray_serve, warm=shared_warm)
    runtime.start(serve_api=False)
    try:
        runtime.upload(tiny_dataset, "pets")
        deadline, trial = time.time() + 240, None
        while time.time() < deadline:
            done = [r for _, s, r in runtime.store.records("training-job") if s in ("Completed", "Failed")]
            if done:
                trial = done[0]
                break
            time.sleep(0.5)
    finally:
        runtime.stop()
    assert trial is not None and trial["TrainingJobStatus"] == "Completed", trial and trial.get("FailureReason")
    hyperparameters = trial["HyperParameters"]
    assert (hyperparameters["weights"], hyperparameters["train-mode"]) == ("imagenet", "head")
    assert "image-size" not in hyperparameters, "the weights' own input size"
    archive = runtime.bucket.path_of_uri(trial["ModelArtifacts"]["S3ModelArtifacts"])
    with tarfile.open(archive) as tar:
        state = torch.load(io.BytesIO(tar.extractfile("model.pth").read()), weights_only=True)
        meta = json.loads(tar.extractfile("model.json").read())
    assert (meta["image_size"], meta["resize_size"]) == (224, 256), "resnet18's ImageNet weights' preprocessing"
    assert torch.equal(state["conv1.weight"], fake["conv1.weight"]), "the backbone is the cached ImageNet file's"


def test_without_weights_it_says_why_once_and_trains_from_scratch(torch_home):
    said: list[str] = []
    settings = read(None, [])
    for_this_machine(settings, said.append, fetch=_unreachable, gpus=0)
    assert len(said) == 1 + (os.cpu_count() > 1), said
    assert "no ImageNet weights for resnet18" in said[0] and "Temporary failure in name resolution" in said[0]
    assert str(defaults.cache_path(defaults.weights_url("resnet18")).parent) in said[0], "where to put the file"
    static = __import__("json").loads(settings.env["STATIC_HYPERPARAMETERS"])
    assert (static["weights"], static["image-size"], static["train-mode"]) == ("none", "64", "full")


def test_what_the_user_set_wins_over_the_machine(torch_home, tmp_path):
    (tmp_path / "droptrain.toml").write_text(
        'STATIC_HYPERPARAMETERS = { weights = "none", "image-size" = 96 }\nTUNING_RANGES = { lr = [0.01, 0.1] }\n'
    )
    settings = read(None, ['STATIC_HYPERPARAMETERS={"arch": "resnet34"}'])
    for_this_machine(settings, lambda line: None, fetch=_offline, gpus=0)
    static = __import__("json").loads(settings.env["STATIC_HYPERPARAMETERS"])
    assert (static["weights"], static["image-size"], static["arch"]) == ("none", "96", "resnet34")
    assert settings.env["TUNING_RANGES"] == '{"lr": [0.01, 0.1]}'


def test_a_gpu_machine_fine_tunes_resnet50(torch_home):
    said: list[str] = []
    settings = read(None, [])
    target = defaults.cache_path(defaults.weights_url("resnet50"))
    situation = for_this_machine(
        settings, said.append, fetch=lambda url, path: (path.parent.mkdir(parents=True), path.write_bytes(b"x")), gpus=2
    )
    assert (
        target.exists()
        and situation.hyperparameters["arch"] == "resnet50"
        and situation.hyperparameters["weights"] == "imagenet"
    )
    assert any("2 CUDA GPU(s)" in line for line in said)


def test_the_one_download_is_checked_and_kept_for_offline_use(tmp_path, capsys):
    content = b"weights" * 1000
    digest = hashlib.sha256(content).hexdigest()
    (tmp_path / "served").mkdir()
    (tmp_path / "served" / "w.pth").write_bytes(content)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "served"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/w.pth"
    try:
        good = tmp_path / "cache" / f"resnet-{digest[:8]}.pth"
        defaults.download(url, good)
        assert good.read_bytes() == content
        err = capsys.readouterr().err
        assert "downloading" in err and "used offline from now on" in err
        with pytest.raises(defaults.WeightsDownloadError, match="does not match its hash"):
            defaults.download(url, tmp_path / "cache" / "resnet-00000000.pth")
        assert not (tmp_path / "cache" / "resnet-00000000.pth").exists()
        assert [p.name for p in (tmp_path / "cache").iterdir()] == [good.name], "no partial file left"
        with pytest.raises(defaults.WeightsDownloadError):
            defaults.download(url.replace("w.pth", "missing.pth"), tmp_path / "cache" / "other.pth")
    finally:
        server.shutdown()
