"""``droptrain demo`` end to end: the real local stack, the real training, the real API."""

import functools

import pytest

from droptrain import cli, demo

pytestmark = pytest.mark.e2e


def test_demo_runs_the_pipeline_and_predicts(tmp_path, capsys, ray_serve, shared_warm, monkeypatch):
    """The demo joins the session's Ray instance (one per process) rather than starting its own, and its
    jobs fork from the session's warm interpreter rather than one that imports torch again. They train an
    epoch or two (a newcomer's, 3 to 6): what is tested is the demo, not how well it learns."""
    monkeypatch.setattr(demo, "DEMO_RANGES", {**demo.DEMO_RANGES, "epochs": [1, 2]})
    monkeypatch.setattr(demo, "LocalRuntime", functools.partial(demo.LocalRuntime, warm=shared_warm))
    assert cli.main(["demo", "--home", str(tmp_path / "home"), "--trials", "2"]) == 0
    out = capsys.readouterr().out
    for event in (
        "dataset.accepted",
        "tuning.started",
        "tuning.completed",
        "training.started",
        "training.completed",
        "deployment.started",
        "deployment.completed",
    ):
        assert event in out
    assert "── summary" in out and "best hyperparams" in out
    classes = {p.name for p in (tmp_path / "home" / "shapes" / "train").iterdir()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"], "the demo wrote nothing outside its home"
    answers = [line for line in out.splitlines() if line.startswith("   ") and "→" in line]
    predicted = [line.split("→")[1].split()[0] for line in answers]
    assert len(predicted) == 4 and set(predicted) <= classes
