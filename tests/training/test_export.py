"""The model exported to ONNX and TorchScript (``trainlib.export``): the calibrated logits, a dynamic batch,
each format kept only when it answers as the PyTorch model does, and the reason recorded when not."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from trainlib import export, models


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = models.build_model("resnet18", 3).eval()
    images = torch.randn(6, 3, 48, 48)
    out = tmp_path_factory.mktemp("export")
    return model, images, out, export.export(model, 2.0, images, out, "test")


def test_both_formats_are_kept_and_compute_the_calibrated_logits(exported):
    import onnxruntime

    model, images, out, report = exported
    assert report["split"] == "test" and report["images"] == 6 and report["opset"] >= 17
    for name in ("onnx", "torchscript"):
        entry = report["formats"][name]
        assert entry["kept"] and entry["max_abs_difference"] <= 1e-4 and entry["top1_agreement"] == 1.0, entry
        assert (out / export.FILES[name]).is_file()
    with torch.no_grad():
        calibrated = (model(images) / 2.0).numpy()
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 4, 6):  # the batch is dynamic
        (logits,) = session.run(None, {"images": images[:batch].numpy()})
        assert np.allclose(logits, calibrated[:batch], atol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated; model.pt is for its loaders
        scripted = torch.jit.load(str(out / "model.pt"))
    assert torch.allclose(scripted(images[:2]), torch.from_numpy(calibrated[:2]), atol=1e-4)


def test_a_format_that_answers_differently_is_left_out_with_the_reason(tmp_path, monkeypatch):
    def drifting(module, sample, path):
        path.write_bytes(b"a model")
        return lambda images: module(images) + torch.linspace(0, 1, module(images).shape[1])

    monkeypatch.setitem(export.WRITERS, "torchscript", drifting)
    monkeypatch.setitem(export.WRITERS, "onnx", lambda module, sample, path: (_ for _ in ()).throw(RuntimeError("no")))
    model = models.build_model("resnet18", 3).eval()
    report = export.export(model, 1.0, torch.randn(4, 3, 32, 32), tmp_path, "valid")
    drifted = report["formats"]["torchscript"]
    assert not drifted["kept"] and "differ by up to" in drifted["reason"] and not (tmp_path / "model.pt").exists()
    assert report["formats"]["onnx"] == {"kept": False, "reason": "RuntimeError: no"}
    assert "onnx left out (RuntimeError: no)" in export.line(report)


def test_the_final_jobs_archive_carries_both_formats_and_the_documented_example_runs(trained_job, tiny_dataset):
    """The trained job exports (its hyperparameters say export on, as the final job's do); the docs'
    onnxruntime example, run as written on the test split, answers as the endpoint's code does."""
    import tarfile

    from trainlib.predictor import Classifier, decode

    paths = trained_job["paths"]
    with tarfile.open(trained_job["archive"]) as tar:
        names = set(tar.getnames())
    assert {"model.onnx", "model.pt", "export.json"} <= names
    report = json.loads((paths.model / "export.json").read_text())
    assert report["split"] == "test" and all(f["kept"] for f in report["formats"].values()), report
    assert (paths.output_data / "reports" / "model.onnx").is_file(), "beside the reports, where the API finds them"
    docs = (Path(__file__).resolve().parents[2] / "docs" / "training-and-serving.md").read_text()
    example = re.search(r"```python\n(# model\.onnx with onnxruntime.*?)```", docs, re.S).group(1)
    assert len(example.splitlines()) <= 25
    image = sorted((tiny_dataset / "test").rglob("*.jpg"))[0]
    scope = {"MODEL_DIR": str(paths.model), "IMAGE": str(image)}
    exec(compile(example, "docs example", "exec"), scope)  # noqa: S102 - the documentation's own code
    (answer,) = Classifier.load(paths.model).predict([decode(image.read_bytes())])
    assert scope["label"] == answer["predictions"][0]["label"]
    # Pillow's resize, not torchvision's: the same within a grey level, so nearly the same probability.
    assert scope["probability"] == pytest.approx(answer["predictions"][0]["probability"], abs=0.02)


def test_an_artifact_served_by_onnxruntime_answers_as_pytorch_does(trained_job, tiny_dataset, tmp_path):
    """SERVING_ENGINE=onnxruntime: the final job's model.onnx predicts in the serving application, with the
    PyTorch model's answers (parity), and the container is told to install ONNX Runtime."""
    import shutil

    from trainlib.predictor import Classifier, decode

    model_dir = shutil.copytree(trained_job["paths"].model, tmp_path / "model")
    meta = json.loads((model_dir / "model.json").read_text())
    report = json.loads((model_dir / "export.json").read_text())
    assert export.use_engine(model_dir, meta, report, "onnxruntime") == {
        "engine": "onnxruntime",
        "requirement": export.ONNXRUNTIME,
    }
    assert json.loads((model_dir / "model.json").read_text())["serving_engine"] == "onnxruntime"
    assert (model_dir / "code" / "requirements.txt").read_text().splitlines()[-1] == export.ONNXRUNTIME
    pinned = (Path(__file__).resolve().parents[2] / "training" / "requirements.txt").read_text().splitlines()
    assert export.ONNXRUNTIME in pinned, "the version the job checked the export with"
    onnx, eager = Classifier.load(model_dir), Classifier.load(trained_job["paths"].model)
    assert onnx.session is not None and eager.session is None
    images = [decode(path.read_bytes()) for path in sorted((tiny_dataset / "test").rglob("*.jpg"))]
    for batch in (images[:1], images):
        for ours, theirs in zip(onnx.predict(batch), eager.predict(batch)):
            assert [p["label"] for p in ours["predictions"]] == [p["label"] for p in theirs["predictions"]]
            assert ours["abstained"] == theirs["abstained"]
            for a, b in zip(ours["predictions"], theirs["predictions"]):
                assert a["probability"] == pytest.approx(b["probability"], abs=1e-4)


def test_onnxruntime_asked_for_without_a_kept_onnx_export_serves_with_torch_and_says_why(tmp_path):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "requirements.txt").write_text("# nothing\n")
    (tmp_path / "model.json").write_text("{}")
    report = {"formats": {"onnx": {"kept": False, "reason": "probabilities differ"}}}
    chosen = export.use_engine(tmp_path, {}, report, "onnxruntime")
    assert chosen["engine"] == "torch" and "probabilities differ" in chosen["reason"]
    assert "serving_engine" not in json.loads((tmp_path / "model.json").read_text())
    assert (tmp_path / "code" / "requirements.txt").read_text() == "# nothing\n"
    assert export.use_engine(tmp_path, {}, report, "torch") == {"engine": "torch"}
