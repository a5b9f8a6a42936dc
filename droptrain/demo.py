"""``droptrain demo``: the whole pipeline on this machine, driven by events, with a summary at the end.

A synthetic dataset (or ``--data``) is dropped into the local bucket; from there the same handlers
as in Lambda take over: validation, tuning, the final training job, deployment. Then a few test
images are POSTed to ``/predict`` and the run is summarised.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from pathlib import Path

from droptrain.api_client import post_image
from droptrain.local import defaults
from droptrain.local.runtime import LocalRuntime, reset
from droptrain.progress import LiveProgress
from droptrain.synthetic import make_dataset

# The demo trains from scratch, offline, on 28 images per class. At the local stack's learning rates
# (up to 0.02) BatchNorm's running statistics lag far behind the weights after a handful of steps, so
# the first epochs' validation losses reach 10^2-10^7 and trip the debugger's trend rules. At 1e-4 to
# 6e-4, with batches of 8 or 16, validation loss falls from the first epoch (measured on this dataset).
DEMO_HYPERPARAMETERS = defaults.SCRATCH  # ResNet-18 from scratch at 64 px, whatever weights this machine has
DEMO_RANGES = {"lr": [0.0001, 0.0006], "weight-decay": [0.00001, 0.001], "epochs": [3, 6], "batch-size": [8, 16]}
FINAL_EVENTS = (
    "deployment.completed",
    "deployment.failed",
    "model.held",
    "dataset.rejected",
    "tuning.failed",
    "training.failed",
    "pipeline.failed",
)


class DemoError(Exception):
    pass


def run_demo(
    home: Path,
    data: Path | None = None,
    port: int = 0,
    max_trials: int = 4,
    timeout: float = 600,
    env: dict[str, str] | None = None,
    say: Callable[[str], None] = print,
) -> dict:
    started = time.time()
    phases: dict[str, float] = {}
    reset(home)  # refused, touching nothing, when a stack runs on this home
    if data is None:
        data = home / "shapes"  # inside the home: the demo writes nothing anywhere else
        summary = make_dataset(data, classes=4, per_class=40, size=64, seed=0)
        say(
            f"synthetic dataset: {len(summary['classes'])} classes ({', '.join(summary['classes'])}), "
            f"{summary['per_split']} images per class and split, in {data}"
        )
    phases["dataset"] = time.time() - started
    demo = {
        "MAX_TUNING_JOBS": str(max_trials),
        "STATIC_HYPERPARAMETERS": json.dumps(DEMO_HYPERPARAMETERS),
        "TUNING_RANGES": json.dumps(DEMO_RANGES),
    }
    runtime = LocalRuntime(home, env={**demo, **(env or {})}, say=say, on_line=LiveProgress(say))
    runtime.start(port=port)
    try:
        say(f"local stack up: console {runtime.api_url}/ (API {runtime.api_url}), bucket {runtime.bucket.root}")
        key = runtime.upload(data, data.name.replace("_", "-") or "dataset")
        say(f"uploaded to s3://{runtime.bucket.name}/{key}; the events take it from here")
        seen = _wait_for(runtime, started, timeout, phases)
        final = seen[-1]
        if final != "deployment.completed":
            note = next(n for n in reversed(runtime.notifications()) if n["message"]["event"] == final)
            raise DemoError(f"the pipeline stopped at {final}: {note['subject']}")
        t = time.time()
        images = sorted((data / "test").rglob("*.jpg")) if (data / "test").is_dir() else sorted(data.rglob("*.jpg"))
        samples = random.Random(0).sample(images, min(4, len(images)))
        predictions = []
        for image in samples:
            status, body = post_image(runtime.api_url, image)
            if status != 200:
                raise DemoError(f"/predict answered {status}: {body}")
            predictions.append((image, body))
        phases["first prediction"] = time.time() - t
        return _summary(runtime, predictions, phases, time.time() - started, say)
    finally:
        runtime.stop()


def _wait_for(runtime, started: float, timeout: float, phases: dict[str, float]) -> list[str]:
    marks = {
        "tuning.started": "upload → tuning",
        "training.started": "tuning",
        "deployment.started": "final training",
        "deployment.completed": "deploy",
    }
    last = time.time()
    while time.time() - started < timeout:
        seen = [n["message"]["event"] for n in runtime.notifications()]
        for event, phase in marks.items():
            if event in seen and phase not in phases:
                phases[phase] = time.time() - last
                last = time.time()
        if any(e in FINAL_EVENTS for e in seen):
            return seen
        time.sleep(0.5)
    raise DemoError(f"no result after {timeout:.0f}s; notifications so far: {seen}")


def _summary(runtime, predictions, phases, total, say) -> dict:
    notes = {n["message"]["event"]: n["message"] for n in runtime.notifications()}
    tuning = notes["tuning.completed"]["detail"]
    training = notes["training.completed"]["detail"]
    correct = sum(body["predictions"][0]["label"] == image.parent.name for image, body in predictions)
    say("")
    say("── summary " + "─" * 60)
    say(f"run                {notes['deployment.completed']['run_id']}")
    objective = tuning["objective"]
    say(f"best trial         {tuning['best_training_job']}  {objective['MetricName']} {objective['Value']:.4f}")
    say(f"best hyperparams   {json.dumps(tuning['best_hyperparameters'])}")
    metrics = training["metrics"]
    say(
        f"final test         accuracy {metrics.get('test:accuracy', float('nan')):.4f}, "
        f"loss {metrics.get('test:loss', float('nan')):.4f}"
    )
    say(f"notifications      {len(runtime.notifications())}: {', '.join(notes)}  ({runtime.publisher.path})")
    say(f"model artifact     {training['model_artifact']}")
    say(f"evaluation         {training['output']} (evaluation.json, history.json)")
    verdicts = training.get("rules") or []
    issues = [v["rule"] for v in verdicts if v["status"] == "IssuesFound"]
    say(f"debugger rules     {len(verdicts)} evaluated, " + (f"issues: {', '.join(issues)}" if issues else "no issues"))
    report = training.get("report")
    where = runtime.bucket.path_of_uri(report) if report else training["reports"]
    say(f"report             {where}  (open it in a browser)")
    say(f"predictions        {correct}/{len(predictions)} test images right:")
    for image, body in predictions:
        top = body["predictions"][0]
        say(f"   {image.parent.name:<26} → {top['label']:<26} {top['probability']:.3f}")
    say("timings            " + ", ".join(f"{k} {v:.0f}s" for k, v in phases.items()) + f"; total {total:.0f}s")
    return {
        "notifications": list(notes),
        "phases": phases,
        "total": total,
        "test_accuracy": metrics.get("test:accuracy"),
        "predictions": [(str(i), b) for i, b in predictions],
        "best": tuning,
    }
