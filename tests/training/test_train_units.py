"""The training loop's parts: frozen backbones, feature reuse, weights loading, the debugger hook."""

import os
import subprocess
import sys
import urllib.error

import pytest
import torch
import train
from torch import nn

from helpers import DEADLINE, FAST_HYPERPARAMETERS, ROOT, hyperparameter_args, run_train
from trainlib import models
from trainlib.datasets import discover
from trainlib.debugging import NullHook
from trainlib.errors import WeightsUnavailableError


def _args(tiny_dataset, **overrides):
    hps = {**FAST_HYPERPARAMETERS, **overrides}
    return train.parse_args([*hyperparameter_args(hps), "--data-dir", str(tiny_dataset), "--workers", "0"])


def test_hyperparameters_as_aws_training_toolkit_passes_them(tmp_path):
    """The toolkit JSON-decodes each hyperparameter before it builds the command line, so a
    ``stop-on-rule-issues`` of ``"true"`` arrives as ``True`` (a job run through the toolkit failed on
    it); the SDK's JSON-quoted strings arrive unquoted. Every choice flag takes its value in any case."""
    hps = {
        "stop-on-rule-issues": "true",
        "profile": "OFF",
        "device": "cpu",
        "augment": "on",
        "optimizer": '"sgd"',
        "arch": "ResNet34",
        "weights": "none",
        "train-mode": "full",
        "lr": "1e-3",
        "batch-size": "32",
        "epochs": "2",
    }
    argv = hyperparameter_args(hps)
    assert argv[argv.index("--stop-on-rule-issues") + 1] == "True"
    args = train.parse_args([*argv, "--data-dir", str(tmp_path)])
    assert (args.stop_on_rule_issues, args.profile, args.device, args.augment, args.optimizer, args.arch) == (
        "true",
        "off",
        "cpu",
        "on",
        "sgd",
        "resnet34",
    )
    assert (args.weights, args.train_mode, args.lr, args.batch_size, args.epochs) == ("none", "full", 0.001, 32, 2)
    assert (
        train.parse_args(
            [*hyperparameter_args({"stop-on-rule-issues": "false"}), "--data-dir", str(tmp_path)]
        ).stop_on_rule_issues
        == "false"
    )


def test_head_mode_never_touches_the_backbone(tiny_dataset):
    args = _args(tiny_dataset, **{"train-mode": "head", "augment": "on"})
    splits = discover(tiny_dataset)
    model = models.build_model("resnet18", len(splits.classes))
    models.freeze_backbone(model, "resnet18")
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}
    data = train.make_batches(args, splits, model, torch.device("cpu"))
    assert isinstance(data.trainable, models.FrozenBackboneClassifier)
    optimizer = train.make_optimizer(args, [p for p in data.trainable.parameters() if p.requires_grad])
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    stats = train.train_one_epoch(
        data.trainable,
        nn.CrossEntropyLoss(),
        optimizer,
        data.train_batches(1),
        torch.device("cpu"),
        scaler,
        NullHook(),
        1,
        amp=False,
    )
    assert stats.seen == len(splits.train)
    after = model.state_dict()
    for name, value in before.items():
        assert torch.equal(value, after[name]), f"{name} changed (BatchNorm statistics included)"
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("fc."))
    assert model.fc.weight.grad is not None


def test_head_mode_computes_frozen_features_once(tiny_dataset):
    args = _args(tiny_dataset, **{"train-mode": "head"})
    splits = discover(tiny_dataset)
    model = models.build_model("resnet18", len(splits.classes))
    models.freeze_backbone(model, "resnet18")
    images_seen = []
    model.conv1.register_forward_hook(lambda m, inp, out: images_seen.append(inp[0].shape[0]))
    data = train.make_batches(args, splits, model, torch.device("cpu"))
    n_images = len(splits.train) + len(splits.valid) + len(splits.test)
    assert sum(images_seen) == n_images
    assert data.trainable is model.fc
    for epoch in (1, 2, 3):
        batches = list(data.train_batches(epoch))
        assert sum(len(t) for _, t, _ in batches) == len(splits.train)
        list(data.eval_batches["valid"]())
    assert sum(images_seen) == n_images, "later epochs reuse the cached features"


def test_imagenet_weights_come_from_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = models.weights_cache_path("resnet18")
    assert cached.is_relative_to(tmp_path)
    reference = models.ARCHS["resnet18"].build(weights=None)
    cached.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cached)
    model = models.build_model("resnet18", 3, weights="imagenet")
    assert torch.equal(model.conv1.weight, reference.conv1.weight)
    assert model.fc.out_features == 3


def test_imagenet_weights_offline_fail_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "urlopen", no_network)
    with pytest.raises(WeightsUnavailableError) as info:
        models.build_model("resnet50", 3, weights="imagenet")
    message = str(info.value)
    assert str(models.weights_cache_path("resnet50")) in message
    assert "--weights none" in message


def test_smdebug_hook_with_a_frozen_backbone(tiny_dataset, tmp_path, shared_warm):
    from smdebug.trials import create_trial

    hps = {**FAST_HYPERPARAMETERS, "train-mode": "head", "epochs": "2", "lr": "0.01"}
    result = run_train(
        [
            *hyperparameter_args(hps),
            "--data-dir",
            str(tiny_dataset),
            "--no-checkpoints",
            "--model-dir",
            str(tmp_path / "m"),
            "--output-data-dir",
            str(tmp_path / "o"),
            "--debug-out",
            str(tmp_path / "debug"),
        ],
        warm=shared_warm,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    trial = create_trial(str(tmp_path / "debug"))
    names = trial.tensor_names()
    assert any("CrossEntropyLoss" in n for n in names)
    assert any(n.endswith("weight") for n in names)
    assert len(trial.steps()) > 0


def _hook_in_fresh_process(tmp_path, prelude: str, env: dict[str, str] | None = None) -> str:
    """What create_hook gives in a new interpreter after ``prelude`` ran (smdebug's state is per process)."""
    code = (
        f"{prelude}\n"
        "import sys; sys.path.insert(0, 'training')\n"
        "from torch import nn\n"
        "from trainlib.debugging import create_hook\n"
        "from pathlib import Path\n"
        f"hook = create_hook(nn.Linear(2, 2), nn.CrossEntropyLoss(), Path({str(tmp_path / 'debug')!r}))\n"
        "print(type(hook).__name__)\n"
    )
    clean = {k: v for k, v in os.environ.items() if k != "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip().splitlines()[-1] + "\n" + result.stderr


def test_smdebug_absent_means_no_hook(tmp_path):
    out = _hook_in_fresh_process(tmp_path, "import sys; sys.modules['smdebug'] = None")
    assert out.startswith("NullHook") and "training without the debugger hook: smdebug is not installed" in out


def test_smdebug_after_protobuf_loaded_natively_means_no_hook_and_says_why(tmp_path):
    out = _hook_in_fresh_process(tmp_path, "import google.protobuf.message")
    assert out.startswith("NullHook")
    assert "protobuf was already imported with its 'upb' backend" in out


def test_smdebug_writes_on_numpy_2_and_protobuf_5_plus(tmp_path):
    """The venv has the training container's versions; the hook must really save there."""
    import google.protobuf
    import numpy

    assert int(numpy.__version__.split(".")[0]) >= 2 and int(google.protobuf.__version__.split(".")[0]) >= 5
    assert _hook_in_fresh_process(tmp_path, "").startswith("_SmdebugHook")


def _counting_backbone_model(classes: int, state: dict | None = None):
    model = models.build_model("resnet18", classes)
    if state is not None:
        model.load_state_dict(state)
    models.freeze_backbone(model, "resnet18")
    seen: list[int] = []
    model.conv1.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[0]))
    return model, seen


def _features(data):
    return {name: torch.cat([x for x, _, _ in batches()]) for name, batches in data.eval_batches.items()}


def test_feature_cache_lets_a_second_run_skip_the_backbone(tiny_dataset, tmp_path):
    """What tuning trials rely on: same images and backbone, another run loads instead of computing."""
    args = _args(tiny_dataset, **{"train-mode": "head", "lr": "0.01"})
    args.feature_cache = tmp_path / "cache"
    splits = discover(tiny_dataset)
    first, seen_first = _counting_backbone_model(len(splits.classes))
    data_first = train.make_batches(args, splits, first, torch.device("cpu"))
    assert sum(seen_first) == len(splits.train) + len(splits.valid) + len(splits.test)

    args_other = _args(tiny_dataset, **{"train-mode": "head", "lr": "0.0001", "batch-size": "8"})  # another trial
    args_other.feature_cache = args.feature_cache
    second, seen_second = _counting_backbone_model(len(splits.classes), first.state_dict())
    data_second = train.make_batches(args_other, splits, second, torch.device("cpu"))
    assert seen_second == [], "the second run never ran the backbone"
    for name, features in _features(data_first).items():
        assert torch.equal(features, _features(data_second)[name])
    assert sum(len(t) for _, t, _ in data_second.train_batches(1)) == len(splits.train)


def test_feature_cache_misses_when_images_or_backbone_differ(tiny_dataset, tmp_path):
    import shutil

    data_dir = tmp_path / "data"
    shutil.copytree(tiny_dataset, data_dir)
    args = _args(data_dir, **{"train-mode": "head"})
    args.feature_cache = tmp_path / "cache"
    splits = discover(data_dir)
    model, _ = _counting_backbone_model(len(splits.classes))
    train.make_batches(args, splits, model, torch.device("cpu"))

    other_weights, seen = _counting_backbone_model(len(splits.classes))  # a fresh random backbone
    train.make_batches(args, splits, other_weights, torch.device("cpu"))
    assert sum(seen) == len(splits.train) + len(splits.valid) + len(splits.test)

    # One training image changes: the train split is computed again, valid and test are loaded.
    changed = splits.train[0][0]
    changed.write_bytes(splits.train[1][0].read_bytes())
    same, seen = _counting_backbone_model(len(splits.classes), model.state_dict())
    train.make_batches(args, discover(data_dir), same, torch.device("cpu"))
    assert sum(seen) == len(splits.train)


def test_a_damaged_cache_entry_is_recomputed(tiny_dataset, tmp_path, caplog):
    args = _args(tiny_dataset, **{"train-mode": "head"})
    args.feature_cache = tmp_path / "cache"
    splits = discover(tiny_dataset)
    model, _ = _counting_backbone_model(len(splits.classes))
    expected = _features(train.make_batches(args, splits, model, torch.device("cpu")))
    entries = sorted(args.feature_cache.glob("*.pt"))
    assert len(entries) == 3, "one entry per split"
    for entry in entries:
        entry.write_bytes(entry.read_bytes()[:100])  # truncated, as by a full disk
    again, seen = _counting_backbone_model(len(splits.classes), model.state_dict())
    with caplog.at_level("WARNING"):
        got = _features(train.make_batches(args, splits, again, torch.device("cpu")))
    assert sum(seen) == len(splits.train) + len(splits.valid) + len(splits.test)
    assert "unreadable" in caplog.text
    for name in expected:
        assert torch.allclose(expected[name], got[name])


def test_an_unwritable_feature_cache_only_turns_caching_off(tiny_dataset, tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    args = _args(tiny_dataset, **{"train-mode": "head"})
    args.feature_cache = blocker / "cache"
    splits = discover(tiny_dataset)
    model, seen = _counting_backbone_model(len(splits.classes))
    with caplog.at_level("WARNING"):
        data = train.make_batches(args, splits, model, torch.device("cpu"))
    assert "feature cache disabled" in caplog.text
    assert sum(len(t) for _, t, _ in data.train_batches(1)) == len(splits.train)


def test_progress_lines_come_at_most_every_interval_and_match_no_metric():
    import re

    from chalice_app.sagemaker_requests import METRIC_DEFINITIONS

    said, now = [], [0.0]
    line = train.ProgressLine(2, 5, 1000, every=2.0, clock=lambda: now[0], say=lambda text, flush: said.append(text))
    for _ in range(10):
        now[0] += 0.5
        line.step(64)
    assert said == [
        "progress: epoch 2/5, 256/1000 images, 128.0 images/s",
        "progress: epoch 2/5, 512/1000 images, 128.0 images/s",
    ]
    assert not any(re.search(d["Regex"], text) for d in METRIC_DEFINITIONS for text in said)
