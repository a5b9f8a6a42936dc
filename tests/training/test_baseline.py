"""The promotion gate's comparison: train.py evaluates the project's serving model (its ``baseline``
channel) on the new job's own held-out split, with the serving model's own preprocessing."""

from __future__ import annotations

import json
import shutil

from helpers import FAST_HYPERPARAMETERS, hyperparameter_args, run_train


def _train_with_baseline(warm, tiny_dataset, tmp_path, baseline_dir, hps=None, extra=()):
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
            *extra,
        ],
        warm=warm,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads((tmp_path / "out" / "evaluation.json").read_text()), result


def test_the_serving_model_is_evaluated_on_the_same_split(tiny_dataset, trained_job, tmp_path, shared_warm):
    channel = tmp_path / "baseline"
    channel.mkdir()
    shutil.copy(trained_job["archive"], channel / "model.tar.gz")  # as SageMaker stages an S3 object channel
    # Another image size than the baseline's (48): each model sees the images its own way.
    evaluation, result = _train_with_baseline(shared_warm, tiny_dataset, tmp_path, channel, {"image-size": "32"})
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


def test_a_baseline_that_cannot_be_read_never_fails_the_job(tiny_dataset, tmp_path, shared_warm):
    channel = tmp_path / "baseline"
    channel.mkdir()
    (channel / "model.tar.gz").write_bytes(b"not a tar archive")
    evaluation, _ = _train_with_baseline(shared_warm, tiny_dataset, tmp_path, channel)
    assert "cannot be read" in evaluation["baseline"]["error"]
    assert (tmp_path / "model" / "model.pth").is_file()


def _reviewed(root, tiny_dataset, new_class="zebra"):
    """Three images labelled in the review queue: two of a class the dataset lacks (one held out), one known."""
    known = sorted(p.name for p in (tiny_dataset / "train").iterdir())[0]
    images = sorted((tiny_dataset / "test").rglob("*.jpg"))
    for split, name, source in (
        ("train", new_class, images[0]),
        ("test", new_class, images[1]),
        ("train", known, images[2]),
    ):
        (root / split / name).mkdir(parents=True, exist_ok=True)
        shutil.copy(source, root / split / name / f"{source.parent.name}-{source.name}")
    return known


def test_a_warm_started_run_with_a_new_class_is_judged_on_the_classes_both_know(
    tiny_dataset, trained_job, tmp_path, shared_warm
):
    """Retrain: the serving model's weights start the run (its head's rows by class name), the reviewed images
    join the splits, and the serving model is compared on the classes both know."""
    channel = tmp_path / "serving"
    channel.mkdir()
    shutil.copy(trained_job["archive"], channel / "model.tar.gz")
    _reviewed(tmp_path / "reviewed", tiny_dataset)
    evaluation, result = _train_with_baseline(
        shared_warm,
        tiny_dataset,
        tmp_path,
        channel,
        extra=["--warm-start-dir", str(channel), "--reviewed-dir", str(tmp_path / "reviewed")],
    )
    assert "review: 3 reviewed images added" in result.stdout
    assert "warm start from pets-1a2b3c4d: 4 known classes, new: zebra" in result.stdout
    assert "zebra" in evaluation["classes"] and len(evaluation["classes"]) == 5
    assert evaluation["per_class"]["zebra"]["support"] == 1, "the held-out reviewed image is in the test split"
    baseline = evaluation["baseline"]
    assert baseline["classes_match"] is False and baseline["shared_classes"] == [
        c for c in evaluation["classes"] if c != "zebra"
    ]
    assert set(baseline["per_class"]) == set(baseline["new"]["per_class"]) == set(baseline["shared_classes"])
    support = sum(c["support"] for c in evaluation["per_class"].values()) - 1
    assert baseline["new"]["macro_avg"]["support"] == baseline["macro_avg"]["support"] == support, "the same images"


def test_a_warm_start_from_another_architecture_fails_clearly(tiny_dataset, trained_job, tmp_path, shared_warm):
    channel = tmp_path / "serving"
    channel.mkdir()
    shutil.copy(trained_job["archive"], channel / "model.tar.gz")
    result = run_train(
        [
            *hyperparameter_args({**FAST_HYPERPARAMETERS, "epochs": "1", "arch": "resnet34"}),
            "--data-dir",
            str(tiny_dataset),
            "--no-checkpoints",
            "--model-dir",
            str(tmp_path / "model"),
            "--output-data-dir",
            str(tmp_path / "out"),
            "--warm-start-dir",
            str(channel),
        ],
        warm=shared_warm,
    )
    assert result.returncode == 1
    assert "the serving model is a resnet18, this run trains a resnet34: no warm start" in result.stderr
