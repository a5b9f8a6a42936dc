"""droptrain.toml and --set: the local stack runs with exactly what they say, and refuses what it cannot use."""

from __future__ import annotations

import json
import time

import pytest
from local.test_local_runtime import FAKE_SOURCE

from droptrain import cli
from droptrain.local.runtime import LocalRuntime
from droptrain.local.settings import SettingsError, read
from helpers import DEADLINE

TOML = """
TUNING_STRATEGY = "Random"
MAX_TUNING_JOBS = 2
MAX_PARALLEL_JOBS = 1
AUDIT = false
STATIC_HYPERPARAMETERS = { arch = "resnet34", "image-size" = 96 }
"""


def test_the_jobs_run_with_exactly_what_the_file_says(
    tmp_path, tiny_dataset, trained_job, monkeypatch, ray_serve, shared_warm
):
    monkeypatch.setenv("FAKE_EPOCH_SECONDS", "0.05")
    monkeypatch.setenv("FAKE_MODEL_SOURCE", str(trained_job["paths"].model))
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "fake.log"))
    (tmp_path / "droptrain.toml").write_text(TOML)
    settings = read(tmp_path / "droptrain.toml", ["ROLLOUT_BAKE_SECONDS=1"])
    assert settings.sources == {
        name: str(tmp_path / "droptrain.toml")
        for name in ("TUNING_STRATEGY", "MAX_TUNING_JOBS", "MAX_PARALLEL_JOBS", "AUDIT", "STATIC_HYPERPARAMETERS")
    } | {"ROLLOUT_BAKE_SECONDS": "--set"}
    runtime = LocalRuntime(
        tmp_path / "home",
        env=settings.env,
        say=lambda m: None,
        source_dir=FAKE_SOURCE,
        serving=ray_serve,
        warm=shared_warm,
    )
    runtime.start(serve_api=False)
    try:
        runtime.upload(tiny_dataset, "pets")
        deadline = time.time() + DEADLINE
        while time.time() < deadline and not runtime.store.names("training-job"):
            time.sleep(0.2)
        tuning = runtime.store.get("tuning-job", runtime.store.names("tuning-job")[0])
        trial = runtime.store.get("training-job", runtime.store.names("training-job")[0])
    finally:
        runtime.stop()
    job = tuning["HyperParameterTuningJobConfig"]
    assert job["Strategy"] == "Random" and job["ResourceLimits"] == {
        "MaxNumberOfTrainingJobs": 2,
        "MaxParallelTrainingJobs": 1,
    }
    assert trial["HyperParameters"]["arch"] == "resnet34" and trial["HyperParameters"]["image-size"] == "96"
    assert trial["HyperParameters"]["weights"] == "none", "the local defaults stay under what the file changes"


@pytest.mark.parametrize(
    "text,sets,words",
    [
        ("NOT_A_VARIABLE = 1", [], "unknown variable NOT_A_VARIABLE"),
        ("MAX_TUNING_JOBS = 'many'", [], "MAX_TUNING_JOBS must be an integer"),
        ("DATA_BUCKET = 'mine'", [], "DATA_BUCKET is set by the local stack itself"),
        ("", ["TUNING_STRATEGY=Genetic"], "--set: configuration variable TUNING_STRATEGY must be one of"),
        ("", ["MAX_TUNING_JOBS"], "write NAME=VALUE"),
        ("MAX_TUNING_JOBS = [", [], "not TOML"),
    ],
)
def test_what_cannot_be_used_is_refused_naming_it(tmp_path, text, sets, words):
    (tmp_path / "droptrain.toml").write_text(text)
    with pytest.raises(SettingsError, match=words.replace("[", r"\[")):
        read(tmp_path / "droptrain.toml", sets)


def test_up_stops_before_starting_anything_and_config_says_where_values_came_from(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("MAX_PARALLEL_JOBS = 0")
    assert cli.main(["up", "--config", str(bad), "--home", str(tmp_path / "home")]) == 1
    assert "MAX_PARALLEL_JOBS must be from 1 to 100" in capsys.readouterr().err
    assert not (tmp_path / "home").exists(), "nothing started"
    good = tmp_path / "droptrain.toml"
    good.write_text(TOML)
    assert cli.main(["config", "--config", str(good), "--set", "APPROVAL_MODE=manual"]) == 0
    out = capsys.readouterr().out
    assert f"TUNING_STRATEGY = Random    # {good}" in out and "APPROVAL_MODE = manual    # --set" in out
    assert (
        "ENDPOINT_PREFIX = droptrain-local    # the local stack" in out
        and "GATE_MAX_F1_DROP = (default)    # default" in out
    )
    ranges = next(line for line in out.splitlines() if line.startswith("TUNING_RANGES = "))
    assert ranges.endswith("# the local stack; droptrain up settles it by this machine's weights, GPUs and cores")
    static = json.loads(
        next(line for line in out.splitlines() if line.startswith("STATIC_HYPERPARAMETERS"))
        .split(" = ", 1)[1]
        .split("    #")[0]
    )
    assert static["arch"] == "resnet34" and static["train-mode"] == "full"
