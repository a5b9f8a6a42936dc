"""The promotion gate's comparison: train.py evaluates the project's serving model (its ``baseline``
channel) on the new job's own held-out split, with the serving model's own preprocessing."""

from __future__ import annotations

import json
import shutil

from helpers import FAST_HYPERPARAMETERS, hyperparameter_args, run_train


def _train_with_baseline(tiny_dataset, tmp_path, baseline_dir, hps=None):
    result = run_train(
        [
            *hyperparameter_args({**FAST_HYPERPARAMETERS, "epochs": "1", **(hps or {})}),
            "--data-dir",
            str(tiny_dataset),
            "--no-checkpoints",
            "--run-id",
            "pets-22222222",
            "--model-dir",
            str(tmp_path / "model"),
            "--output-data-dir",
            str(tmp_path / "out"),
            "--baseline-dir",
            str(baseline_dir),
        ]
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads((tmp_path / "out" / "evaluation.json").read_text()), result


def test_the_serving_model_is_evaluated_on_the_same_split(tiny_dataset, trained_job, tmp_path):
    channel = tmp_path / "baseline"
    channel.mkdir()
    shutil.copy(trained_job["archive"], channel / "model.tar.gz")  # as SageMaker stages an S3 object channel
    # Another image size than the baseline's (48): each model sees the images its own way.
    evaluation, result = _train_with_baseline(tiny_dataset, tmp_path, channel, {"image-size": "32"})
    baseline = evaluation["baseline"]
    assert baseline["run_id"] == "pets-1a2b3c4d" and baseline["classes_match"] is True
    assert baseline["classes"] == evaluation["classes"]
    assert sum(c["support"] for c in baseline["per_class"].values()) == sum(
        c["support"] for c in evaluation["per_class"].values()
    ), "the same images"
    assert 0 <= baseline["macro_avg"]["f1"] <= 1
    assert "baseline=pets-1a2b3c4d macro_f1=" in result.stdout
    reported = json.loads((tmp_path / "out" / "reports" / "evaluation.json").read_text())
    assert reported == evaluation, "uploaded with the reports, where the registry points"


def test_a_baseline_that_cannot_be_read_never_fails_the_job(tiny_dataset, tmp_path):
    channel = tmp_path / "baseline"
    channel.mkdir()
    (channel / "model.tar.gz").write_bytes(b"not a tar archive")
    evaluation, _ = _train_with_baseline(tiny_dataset, tmp_path, channel)
    assert "cannot be read" in evaluation["baseline"]["error"]
    assert (tmp_path / "model" / "model.pth").is_file()
