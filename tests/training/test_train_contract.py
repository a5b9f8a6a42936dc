"""train.py as SageMaker runs it: SM_* variables, archive channel, hyperparameters, artifact, evaluation."""

import json
import re
import signal
import subprocess
import sys
import tarfile

import pytest

from helpers import DEADLINE, FAST_HYPERPARAMETERS, TRAINING_DIR, hyperparameter_args, run_train

# The tuning job's MetricDefinitions (docs/architecture.md): the lines must match exactly these.
EPOCH_LINE = re.compile(
    r"^epoch=(\d+) train_loss=([0-9.]+) valid_loss=([0-9.]+) valid_accuracy=([0-9.]+)"
    r" valid_balanced_accuracy=([0-9.]+) valid_macro_f1=([0-9.]+)$"
)
TEST_LINE = re.compile(
    r"^test_loss=([0-9.]+) test_accuracy=([0-9.]+) test_balanced_accuracy=([0-9.]+) test_macro_f1=([0-9.]+)$"
)


def test_prints_one_metric_line_per_epoch_then_test_metrics(trained_job):
    epochs = [EPOCH_LINE.match(line) for line in trained_job["lines"] if line.startswith("epoch=")]
    assert [int(m.group(1)) for m in epochs] == [1, 2, 3, 4]
    tests = [TEST_LINE.match(line) for line in trained_job["lines"] if line.startswith("test_")]
    assert len(tests) == 1 and tests[0]
    # Balanced classes: no remedy, and the run says why.
    assert "class balance: off (imbalance ratio 1.0, below 3)" in trained_job["lines"]
    # The line's balanced accuracy and macro-F1 are evaluation.json's, for the same split.
    report = json.loads((trained_job["paths"].output_data / "evaluation.json").read_text())
    balanced, macro_f1 = float(tests[0].group(3)), float(tests[0].group(4))
    assert (balanced, macro_f1) == pytest.approx((report["balanced_accuracy"], report["macro_f1"]), abs=5e-5)


def test_learns_far_above_chance(trained_job):
    meta = json.loads((trained_job["paths"].model / "model.json").read_text())
    # 4 classes: chance is 0.25. A broken loop (no step, wrong labels, frozen everything) stays there.
    assert meta["metrics"]["test_accuracy"] >= 0.7
    assert meta["metrics"]["valid_accuracy"] >= 0.7


def test_artifact_layout(trained_job):
    with tarfile.open(trained_job["archive"]) as tar:
        names = set(tar.getnames())
    # What AWS's Ray Serve container reads from /opt/ml/model (docs/architecture.md, "Model artifact and serving").
    for required in (
        "model.pth",
        "model.json",
        "config.yaml",
        "serve_app.py",
        "code/requirements.txt",
        "trainlib/predictor.py",
        "trainlib/transforms.py",
        "trainlib/models.py",
    ):
        assert required in names
    assert not any("__pycache__" in n for n in names)
    assert not any(
        n.startswith("trainlib/") and n.endswith(("rules.py", "debugging.py", "report.py")) for n in names
    ), "only what serving imports"
    import yaml
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(yaml.safe_load((trained_job["paths"].model / "config.yaml").read_text()))
    (app,) = config.applications
    assert (app.import_path, app.route_prefix) == ("serve_app:app", "/")
    assert app.deployments[0].ray_actor_options.num_gpus == 0, "a CPU inference instance type by default"
    meta = json.loads((trained_job["paths"].model / "model.json").read_text())
    assert meta["arch"] == "resnet18" and meta["image_size"] == 48
    assert meta["classes"] == sorted(meta["classes"]) and len(meta["classes"]) == 4
    assert meta["normalization"] == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert meta["run_id"] == "pets-1a2b3c4d", "run id is the job name without -final"
    assert meta["hyperparameters"]["optimizer"] == "adamw", "JSON-quoted SDK values are unquoted"
    assert meta["hyperparameters"]["batch-size"] == 16
    assert meta["dataset"]["layout"] == "splits"


def test_evaluation_json(trained_job):
    report = json.loads((trained_job["paths"].output_data / "evaluation.json").read_text())
    meta = json.loads((trained_job["paths"].model / "model.json").read_text())
    assert report["split"] == "test"
    assert set(report["per_class"]) == set(meta["classes"])
    matrix = report["confusion_matrix"]
    total = sum(map(sum, matrix))
    assert total == meta["dataset"]["test"] == report["macro_avg"]["support"]
    assert report["accuracy"] == pytest.approx(sum(matrix[i][i] for i in range(4)) / total)
    assert report["accuracy"] == pytest.approx(meta["metrics"]["test_accuracy"])
    for name, row in zip(report["classes"], matrix):
        assert report["per_class"][name]["support"] == sum(row)
        for key in ("precision", "recall", "f1"):
            assert 0.0 <= report["per_class"][name][key] <= 1.0


def test_checkpoint_written_each_epoch_in_the_jobs_own_folder(trained_job):
    # A tuning job's trials share one checkpoint prefix: each writes under its own job name there.
    written = list(trained_job["paths"].checkpoints.rglob("checkpoint-*.pt"))
    assert [p.parent.name for p in written] == ["pets-1a2b3c4d-final"]


def _checkpointed_args(tiny_dataset, tmp_path, epochs: int) -> list[str]:
    """train.py's arguments with checkpoints in ``tmp_path/ckpt``."""
    return [
        *hyperparameter_args({**FAST_HYPERPARAMETERS, "epochs": str(epochs)}),
        "--data-dir",
        str(tiny_dataset),
        "--model-dir",
        str(tmp_path / "model"),
        "--output-data-dir",
        str(tmp_path / "out"),
        "--checkpoint-dir",
        str(tmp_path / "ckpt"),
    ]


def _started(args: list[str]) -> subprocess.Popen:
    """train.py running, its epoch lines readable as they come."""
    return subprocess.Popen(
        [sys.executable, str(TRAINING_DIR / "train.py"), *args],
        cwd=TRAINING_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def _epochs_and_checkpoints(process: subprocess.Popen, ckpt, stop_after: int | None = None):
    """Each epoch line of a running train.py with the epoch of the checkpoint read at that moment, and
    every line it printed; the process killed (as a spot interruption would) after epoch ``stop_after``."""
    import torch

    seen, lines = [], []
    for line in process.stdout:
        lines.append(line)
        match = EPOCH_LINE.match(line.strip())
        if match:
            (checkpoint,) = ckpt.glob("checkpoint-*.pt")
            seen.append((int(match.group(1)), torch.load(checkpoint, weights_only=True)["epoch"]))
            if seen[-1][0] == stop_after:
                process.send_signal(signal.SIGKILL)
                break
    process.wait(timeout=DEADLINE)
    return seen, "".join(lines)


@pytest.fixture(scope="module")
def interrupted(tiny_dataset, tmp_path_factory):
    """One checkpointed run of four epochs, killed after epoch 2, then run again with the same arguments
    (what SageMaker does after a spot interruption): what the checkpoint tests read."""
    tmp_path = tmp_path_factory.mktemp("interrupted")
    args = _checkpointed_args(tiny_dataset, tmp_path, epochs=4)
    first, _ = _epochs_and_checkpoints(_started(args), tmp_path / "ckpt", stop_after=2)
    model_after_kill = (tmp_path / "model" / "model.pth").exists()
    rerun = _started(args)
    second, stdout = _epochs_and_checkpoints(rerun, tmp_path / "ckpt")
    return {
        "dir": tmp_path,
        "first": first,
        "second": second,
        "model_after_kill": model_after_kill,
        "status": rerun.returncode,
        "stdout": stdout,
    }


def test_resumes_after_an_interruption(interrupted):
    """Killed after epoch 2, the rerun picks up at epoch 3."""
    assert [epoch for epoch, _ in interrupted["first"]] == [1, 2]
    assert not interrupted["model_after_kill"]
    assert interrupted["status"] == 0
    assert "resumed from checkpoint at epoch 2" in interrupted["stdout"]
    assert [epoch for epoch, _ in interrupted["second"]] == [3, 4]
    history = json.loads((interrupted["dir"] / "out" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]


def test_a_checkpoint_is_written_after_every_epoch(interrupted):
    """Each epoch line is printed after its checkpoint: reading the checkpoint at that moment finds that
    epoch, in the interrupted run and in the run that resumed it."""
    assert interrupted["first"] + interrupted["second"] == [(1, 1), (2, 2), (3, 3), (4, 4)]


def test_checkpoint_of_another_run_is_not_resumed(interrupted, tiny_dataset, tmp_path, shared_warm):
    """Another run (other hyperparameters) on a checkpoint prefix that holds a finished run's checkpoint."""
    import shutil

    shutil.copytree(interrupted["dir"] / "ckpt", tmp_path / "ckpt")
    common = [
        "--data-dir",
        str(tiny_dataset),
        "--checkpoint-dir",
        str(tmp_path / "ckpt"),
        "--model-dir",
        str(tmp_path / "model"),
        "--output-data-dir",
        str(tmp_path / "out"),
    ]
    other = run_train(
        [*hyperparameter_args({**FAST_HYPERPARAMETERS, "epochs": "1", "lr": "0.001"}), *common], warm=shared_warm
    )
    assert other.returncode == 0, other.stderr[-2000:]
    assert "resumed" not in other.stdout
    # Runs sharing a checkpoint prefix (a tuning job's children) keep separate files.
    assert len(list((tmp_path / "ckpt").glob("checkpoint-*.pt"))) == 2


def _fail(args, tmp_path, warm, env=None):
    out = tmp_path / "sm-output"
    result = run_train(args, env={"SM_OUTPUT_DIR": str(out), **(env or {})}, warm=warm)
    failure = (out / "failure").read_text() if (out / "failure").exists() else ""
    return result, failure


def test_diverging_loss_stops_the_job(tiny_dataset, tmp_path, shared_warm):
    hps = {**FAST_HYPERPARAMETERS, "optimizer": "sgd", "lr": "1e6", "epochs": "3"}
    result, failure = _fail(
        [
            *hyperparameter_args(hps),
            "--data-dir",
            str(tiny_dataset),
            "--no-checkpoints",
            "--model-dir",
            str(tmp_path / "m"),
            "--output-data-dir",
            str(tmp_path / "o"),
        ],
        tmp_path,
        shared_warm,
    )
    assert result.returncode == 1
    assert "NaN or infinite" in failure and "lower the learning rate" in failure
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "m" / "model.pth").exists()


def _fail_here(args, tmp_path, monkeypatch, capsys):
    """``train.run`` in this process, for what fails before any training (a process of its own would
    import torch again): its exit status, what it printed on stderr, SageMaker's failure file. An
    exception other than the clear failure propagates and fails the test: no traceback goes unseen."""
    import train

    out = tmp_path / "sm-output"
    monkeypatch.setenv("SM_OUTPUT_DIR", str(out))
    try:
        status = train.run(args)
    except SystemExit as exc:  # argparse's refusal: status 2
        status = exc.code
    failure = (out / "failure").read_text() if (out / "failure").exists() else ""
    return status, capsys.readouterr().err, failure


def test_single_class_dataset_fails_fast(tmp_path, tiny_dataset, monkeypatch, capsys):
    only = tmp_path / "one"
    cls = sorted((tiny_dataset / "train").iterdir())[0]
    import shutil

    shutil.copytree(cls, only / "train" / cls.name)
    status, stderr, failure = _fail_here(
        ["--data-dir", str(only), "--weights", "none", "--no-checkpoints"], tmp_path, monkeypatch, capsys
    )
    assert status == 1
    assert "at least 2 classes" in failure and "at least 2 classes" in stderr


def test_zip_slip_archive_fails_cleanly(tmp_path, monkeypatch, capsys):
    import zipfile

    channel = tmp_path / "channel"
    channel.mkdir()
    with zipfile.ZipFile(channel / "evil.zip", "w") as zf:
        zf.writestr("train/a/1.jpg", b"x")
        zf.writestr("../../escaped.jpg", b"x")
    status, _, failure = _fail_here(
        ["--data-dir", str(channel), "--weights", "none", "--no-checkpoints"], tmp_path, monkeypatch, capsys
    )
    assert status == 1
    assert "escapes the extraction directory" in failure
    assert not (tmp_path / "escaped.jpg").exists()


def test_unknown_hyperparameter_is_an_error(tiny_dataset, tmp_path, monkeypatch, capsys):
    status, stderr, _ = _fail_here(
        ["--data-dir", str(tiny_dataset), "--learning-rate", "0.1"], tmp_path, monkeypatch, capsys
    )
    assert status == 2
    assert "unknown hyperparameters: --learning-rate" in stderr


def test_every_flag_has_help():
    from train import get_args_parser

    for action in get_args_parser()._actions:
        assert action.help, action.dest


def test_truncated_images_are_skipped_and_counted(tiny_dataset, tmp_path, shared_warm):
    """Headers that parse but pixels that do not: found while loading, skipped, counted, job succeeds."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    victims = sorted((data / "train").rglob("*.jpg"))[:2] + sorted((data / "test").rglob("*.jpg"))[:1]
    for path in victims:
        data_bytes = path.read_bytes()
        path.write_bytes(data_bytes[: len(data_bytes) * 6 // 10])
    for mode in ("full", "head"):
        hps = {**FAST_HYPERPARAMETERS, "epochs": "2", "train-mode": mode}
        result = run_train(
            [
                *hyperparameter_args(hps),
                "--data-dir",
                str(data),
                "--no-checkpoints",
                "--model-dir",
                str(tmp_path / mode),
                "--output-data-dir",
                str(tmp_path / f"o-{mode}"),
            ],
            warm=shared_warm,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        meta = json.loads((tmp_path / mode / "model.json").read_text())
        assert meta["dataset"]["skipped_images"] == 3, mode
        assert "skipping undecodable image" in result.stderr


def test_a_tampered_checkpoint_cannot_run_code(tmp_path):
    """Checkpoints come back from S3 (spot training): loading one holds tensors and plain data only."""
    import pickle

    from trainlib import checkpoints

    class Payload:
        def __reduce__(self):
            return (Path.write_text, (tmp_path / "pwned", "ran"))

    from pathlib import Path

    target = checkpoints.path_for(tmp_path, "f" * 16)
    target.write_bytes(pickle.dumps({"fingerprint": "f" * 16, "epoch": 3, "evil": Payload()}, protocol=2))
    assert checkpoints.load(tmp_path, "f" * 16) is None
    assert not (tmp_path / "pwned").exists()
