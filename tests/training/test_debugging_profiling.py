"""In-job debugging and profiling on real short jobs: verdicts, the report, and the report in a browser."""

from __future__ import annotations

import json
import subprocess

import pytest

from helpers import DEADLINE, FAST_HYPERPARAMETERS, browser, hyperparameter_args, run_train

HEALTHY = {**FAST_HYPERPARAMETERS, "train-mode": "head", "epochs": "4", "lr": "0.005", "batch-size": "32"}


def _job(warm, tiny_dataset, tmp_path, hps, *extra):
    result = run_train(
        [
            *hyperparameter_args(hps),
            "--data-dir",
            str(tiny_dataset),
            "--no-checkpoints",
            "--model-dir",
            str(tmp_path / "model"),
            "--output-data-dir",
            str(tmp_path / "out"),
            "--debug-out",
            str(tmp_path / "debug"),
            *extra,
        ],
        warm=warm,
    )
    rules_file = tmp_path / "out" / "reports" / "rules.json"
    verdicts = {v["rule"]: v for v in json.loads(rules_file.read_text())} if rules_file.exists() else {}
    return result, verdicts


@pytest.fixture(scope="module")
def healthy(tiny_dataset, tmp_path_factory, shared_warm):
    tmp = tmp_path_factory.mktemp("healthy")
    result, verdicts = _job(shared_warm, tiny_dataset, tmp, HEALTHY)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp, result, verdicts


def test_a_healthy_run_trips_no_rule(healthy):
    _, result, verdicts = healthy
    assert len(verdicts) == 6
    assert {v["status"] for v in verdicts.values()} == {"NoIssuesFound"}, verdicts
    assert "rule=ExplodingTensor status=NoIssuesFound" in result.stdout


def test_the_hook_saves_full_tensors_only_where_a_rule_needs_them(healthy):
    from smdebug.exceptions import TensorUnavailableForStep
    from smdebug.trials import create_trial

    tmp, _, _ = healthy
    trial = create_trial(str(tmp / "debug"))
    names = trial.tensor_names()
    gradient = trial.tensor(next(n for n in names if n.startswith("gradient/") and n.endswith("weight")))
    full, reduced = [], []
    for step in gradient.steps():
        try:
            gradient.value(step)
            full.append(step)
        except TensorUnavailableForStep:
            reduced.append(step)
    assert full == [0, 1, 2], "full gradients in the first three training steps only"
    assert reduced, "magnitudes at the regular interval after them"
    assert gradient.reduction_value(reduced[0], "mean", abs=True) > 0
    weight = trial.tensor(next(n for n in names if not n.startswith("gradient/") and n.endswith("weight")))
    with pytest.raises(TensorUnavailableForStep):
        weight.value(weight.steps()[0])
    assert weight.reduction_value(weight.steps()[-1], "max", abs=True) > 0


def test_a_learning_rate_too_small_trips_loss_not_decreasing(tiny_dataset, tmp_path, shared_warm):
    # 88 images in batches of 16, 6 epochs: 36 steps, enough for the rule's two 10-step windows.
    result, verdicts = _job(
        shared_warm,
        tiny_dataset,
        tmp_path,
        {**HEALTHY, "optimizer": "sgd", "lr": "1e-7", "epochs": "6", "batch-size": "16"},
    )
    assert result.returncode == 0
    assert verdicts["LossNotDecreasing"]["status"] == "IssuesFound"
    assert verdicts["ExplodingTensor"]["status"] == "NoIssuesFound"


def test_a_diverging_run_trips_exploding_tensor_and_fails(tiny_dataset, tmp_path, shared_warm):
    result, verdicts = _job(
        shared_warm, tiny_dataset, tmp_path, {**HEALTHY, "optimizer": "sgd", "lr": "1e6", "train-mode": "full"}
    )
    assert result.returncode == 1 and "NaN or infinite" in result.stderr
    assert verdicts["ExplodingTensor"]["status"] == "IssuesFound", verdicts["ExplodingTensor"]


def test_stop_on_rule_issues_ends_a_bad_job_early(tiny_dataset, tmp_path, shared_warm):
    result, _ = _job(
        shared_warm,
        tiny_dataset,
        tmp_path,
        {**HEALTHY, "optimizer": "sgd", "lr": "1e-7", "epochs": "8", "batch-size": "16"},
        "--stop-on-rule-issues",
        "true",
    )
    assert result.returncode == 1
    assert "debugger rule" in result.stderr and "stopped after epoch" in result.stderr
    assert "epoch=8 " not in result.stdout


def test_profile_and_report(healthy):
    tmp, result, verdicts = healthy
    reports = tmp / "out" / "reports"
    profile = json.loads((reports / "profile.json").read_text())
    assert sum(profile["breakdown"].values()) == pytest.approx(1.0)
    assert profile["steps"] and profile["samples"] and profile["torch_ops"]
    assert {"cpu_percent_mean", "memory_percent_max", "rss_mb_max"} <= set(profile["system"])
    html = (reports / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 5, "curves, step breakdown, utilisation, confusion, reliability"
    assert "expected calibration error on the test split" in html
    assert "No debugger rule found an issue." in html
    # The report states what the profile measured (the rule itself is tested on fixed numbers below):
    # on a busy machine even cached features can wait, so the measured breakdown decides the sentence.
    data_share = profile["breakdown"].get("data", 0)
    bottleneck = data_share > 0.3 and data_share * profile["step_ms"] > 5
    assert ("waited on data" in html) == bottleneck and ("waiting for batches" in html) == (not bottleneck)
    assert (tmp / "out" / "torch-trace.json").is_file()


def test_findings_name_a_real_data_bottleneck():
    from trainlib.profiling import findings

    notes = findings({"data": 0.62, "compute": 0.3, "optimizer": 0.08}, {}, [], [], "cuda", 2, None, step_ms=40.0)
    assert notes[0].startswith(
        "The GPU waited on data 62% of the time: raise the data loader's worker count (it was 2)"
    )


def test_findings_do_not_call_a_cheap_wait_a_bottleneck():
    from trainlib.profiling import findings

    # 60% of a 1 ms step is 0.6 ms: waiting, but no bottleneck worth a worker.
    notes = findings({"data": 0.6, "compute": 0.3, "optimizer": 0.1}, {}, [], [], "cpu", 0, None, step_ms=1.0)
    assert notes[0].startswith("Data loading kept up: 60% of step time was spent waiting for batches")


@pytest.mark.browser
def test_the_report_shows_its_plots_in_chromium(healthy, tmp_path):
    chromium, _ = browser()
    report = healthy[0] / "out" / "reports" / "report.html"
    probe = tmp_path / "probe.html"
    # The report itself, plus a line that counts the images the browser actually decoded and laid out.
    probe.write_text(
        report.read_text().replace(
            "</body>",
            """<script>
window.addEventListener('load', () => {
  const shown = [...document.images].filter(
    i => i.complete && i.naturalWidth > 100 && i.getBoundingClientRect().height > 50);
  document.body.setAttribute('data-plots-shown', shown.length);
});</script></body>""",
        )
    )
    result = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert 'data-plots-shown="5"' in result.stdout, result.stderr[-2000:]
    screenshot = tmp_path / "report.png"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile2'}",
            f"--screenshot={screenshot}",
            "--window-size=1000,2400",
            report.as_uri(),
        ],
        capture_output=True,
        timeout=DEADLINE,
    )
    assert screenshot.stat().st_size > 20_000


def test_reports_are_uploaded_to_the_runs_reports_prefix_on_sagemaker(tmp_path, monkeypatch):
    import boto3
    from moto import mock_aws

    from trainlib.job_reports import upload_reports

    reports = tmp_path / "reports"
    reports.mkdir()
    for name in ("report.html", "rules.json", "profile.json"):
        (reports / name).write_text(name)
    for key, value in {
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "y",
        "AWS_DEFAULT_REGION": "us-east-1",
        "SM_TRAINING_ENV": "{}",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("DROPTRAIN_LOCAL", raising=False)
    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="droptrain-data-dev")
        written = upload_reports(reports, "s3://droptrain-data-dev/runs/pets-1a2b3c4d/reports/", client=s3)
        assert written == [f"runs/pets-1a2b3c4d/reports/{n}" for n in ("profile.json", "report.html", "rules.json")]
        assert s3.get_object(Bucket="droptrain-data-dev", Key=written[1])["Body"].read() == b"report.html"
        monkeypatch.setenv("DROPTRAIN_LOCAL", "1")
        assert upload_reports(reports, "s3://droptrain-data-dev/elsewhere/", client=s3) == [], (
            "locally the executor copies them"
        )


SCRATCH = {"weights": "none", "train-mode": "full"}
TREND = [
    {"rule": "LossNotDecreasing", "status": "IssuesFound", "step": 3, "message": "the loss did not decrease"},
    {"rule": "VanishingGradient", "status": "NoIssuesFound", "step": None, "message": ""},
]
OVERTRAINING = [{"rule": "Overtraining", "status": "IssuesFound", "step": 33, "message": "stopped improving"}]


def _expected(history, verdicts, setting):
    from trainlib.profiling import findings

    return [n for n in findings({}, {}, history, verdicts, "cpu", 0, None, setting=setting) if n.startswith("Expected")]


def _history(epochs, accuracies=None):
    accuracies = accuracies or [0.5] * epochs
    return [
        {"epoch": e, "train_loss": 1.0, "valid_loss": 1.0, "valid_accuracy": a}
        for e, a in zip(range(1, epochs + 1), accuracies)
    ]


def test_the_report_says_when_trend_verdicts_are_expected_for_the_setting():
    expected = _expected(_history(3), TREND, SCRATCH)
    assert (
        len(expected) == 1 and "LossNotDecreasing after 3 epoch(s)" in expected[0] and "random weights" in expected[0]
    )
    # With ImageNet weights, in head mode, or after many epochs, the same verdict is a real finding.
    for setting, epochs in (
        ({"weights": "imagenet", "train-mode": "full"}, 3),
        ({"weights": "none", "train-mode": "head"}, 3),
        (SCRATCH, 12),
    ):
        assert not _expected(_history(epochs), TREND, setting)
    assert not _expected(_history(3), TREND[1:], SCRATCH), "nothing to explain when no rule found an issue"


def test_overtraining_after_the_data_was_learnt_is_said_to_be_expected():
    learnt_early = _expected(_history(5, [0.8, 0.9, 1.0, 1.0, 1.0]), OVERTRAINING, {"weights": "imagenet"})
    assert learnt_early == [
        "Expected when the data is learnt early: validation accuracy reached 1.000 at epoch 3 of 5, so the "
        "last epochs had little left to improve, which is what Overtraining reports; fewer epochs would "
        "give the same model."
    ]
    assert not _expected(_history(5, [0.5, 0.6, 0.7, 0.8, 0.9]), OVERTRAINING, {"weights": "imagenet"}), (
        "still improving at the end: a real finding"
    )


@pytest.mark.parametrize("valid_losses,scale", [([2.0e7, 3.1e3, 1.2], "log"), ([1.4, 1.1, 0.9], "linear")])
def test_losses_spanning_decades_are_plotted_on_a_log_axis(valid_losses, scale, monkeypatch):
    import matplotlib.axes

    from trainlib import report

    scales = []
    monkeypatch.setattr(matplotlib.axes.Axes, "set_yscale", lambda self, value, **kw: scales.append(value))
    history = [
        {"epoch": i + 1, "train_loss": 1.5 - 0.1 * i, "valid_loss": v, "valid_accuracy": 0.5}
        for i, v in enumerate(valid_losses)
    ]
    report._figure_png(report._curves(history))
    assert ("log" in scales) == (scale == "log")
