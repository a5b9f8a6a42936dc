"""ONNX Runtime against eager PyTorch on this CPU: the exported model (``trainlib.export``) and the model it
came from, ResNet-18 and ResNet-50 at 224 px, batches of 1 and 8, images a second.

Each engine runs in a process of its own, one after the other: ONNX Runtime's worker threads spin after
a run, and interleaved with PyTorch in one process they slow whichever runs next. Both get every core.

Then the serving application's own path, ``SERVING_ENGINE``'s two engines: a ResNet-18 artifact at 224 px
trained as SageMaker trains it, its ``Classifier.predict`` (preprocessing, the forward pass, the answers)
on decoded JPEGs, batches of 1 and 8, once as trained (PyTorch) and once with ``serving_engine:
onnxruntime`` (its model.onnx), each in its own process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import Row, table, write

ROOT = Path(__file__).resolve().parent.parent
REPEATS = 20

# One engine's images a second, in a fresh interpreter: argv = engine, arch, batch, folder with model.onnx.
MEASURE = r"""
import json, statistics, sys, time
sys.path.insert(0, sys.argv[5])
import torch
engine, arch, batch, folder = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
images = torch.randn(batch, 3, 224, 224)
if engine == "onnxruntime":
    import onnxruntime
    session = onnxruntime.InferenceSession(folder + "/model.onnx", providers=["CPUExecutionProvider"])
    array = images.numpy()
    run = lambda: session.run(None, {"images": array})
else:
    from trainlib import models
    model = models.build_model(arch, 10).eval()
    model.load_state_dict(torch.load(folder + "/model.pth", weights_only=True))
    def run():
        with torch.no_grad():
            model(images)
for _ in range(3):
    run()
times = []
for _ in range(int(sys.argv[6])):
    started = time.perf_counter()
    run()
    times.append(time.perf_counter() - started)
print(json.dumps(batch / statistics.median(times)))
"""


def _export(arch: str, folder: Path) -> None:
    sys.path.insert(0, str(ROOT / "training"))
    import torch

    from trainlib import export, models

    model = models.build_model(arch, 10).eval()
    torch.save(model.state_dict(), folder / "model.pth")
    report = export.export(model, 1.0, torch.randn(4, 3, 224, 224), folder, "random")
    assert report["formats"]["onnx"]["kept"], report


def _rate(engine: str, arch: str, batch: int, folder: Path) -> float:
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, engine, arch, str(batch), str(folder), str(ROOT / "training"), str(REPEATS)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(out.strip().splitlines()[-1])


# The application's predict, in a fresh interpreter: argv = model dir, batch, image, training dir, repeats.
PREDICT = r"""
import json, statistics, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from trainlib.predictor import Classifier, decode
classifier = Classifier.load(Path(sys.argv[1]))
batch = [decode(Path(sys.argv[3]).read_bytes())] * int(sys.argv[2])
for _ in range(3):
    classifier.predict(batch)
times = []
for _ in range(int(sys.argv[5])):
    started = time.perf_counter()
    classifier.predict(batch)
    times.append(time.perf_counter() - started)
print(json.dumps([len(batch) / statistics.median(times), classifier.session is not None]))
"""


def _predict_rate(model_dir: Path, batch: int, image: Path) -> tuple[float, bool]:
    command = [sys.executable, "-c", PREDICT, str(model_dir), str(batch), str(image), str(ROOT / "training")]
    out = subprocess.run([*command, str(REPEATS)], capture_output=True, text=True, check=True).stdout
    rate, onnx = json.loads(out.strip().splitlines()[-1])
    return rate, onnx


def serving_rows() -> list[Row]:
    import shutil
    import tarfile

    from bench_serving import train_model

    from droptrain.synthetic import make_dataset

    sys.path.insert(0, str(ROOT / "training"))
    from trainlib import export

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_dataset(tmp / "data", classes=4, per_class=8, size=224, seed=0)
        archive = train_model(tmp / "data", tmp / "work", "resnet18")
        eager = tmp / "torch"
        with tarfile.open(archive) as tar:
            tar.extractall(eager, filter="data")
        onnx = shutil.copytree(eager, tmp / "onnxruntime")
        meta = json.loads((onnx / "model.json").read_text())
        # The benchmark's job ran without --export; the final job's export, with its parity check:
        import torch

        from trainlib.predictor import Classifier

        model = Classifier.load(eager).model
        report = export.export(
            model, meta.get("calibration", {}).get("temperature", 1.0), torch.randn(4, 3, 224, 224), onnx, "random"
        )
        assert export.use_engine(onnx, meta, report, "onnxruntime")["engine"] == "onnxruntime", report
        image = sorted((tmp / "data" / "test").rglob("*.jpg"))[0]
        for batch in (1, 8):
            theirs, _ = _predict_rate(eager, batch, image)
            ours, used = _predict_rate(onnx, batch, image)
            assert used, "the application loaded model.onnx"
            rows.append(
                Row(
                    f"serving predict, resnet18, batch {batch}, 224 px: SERVING_ENGINE=onnxruntime vs torch",
                    ours,
                    theirs,
                    "torch (as trained)",
                    "images/s",
                    target="no target",
                )
            )
    return rows


def run() -> list[Row]:
    rows = serving_rows()
    for arch in ("resnet18", "resnet50"):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            _export(arch, folder)
            for batch in (1, 8):
                torch_rate = _rate("torch", arch, batch, folder)
                ort_rate = _rate("onnxruntime", arch, batch, folder)
                rows.append(
                    Row(
                        f"{arch}, batch {batch}, 224 px: ONNX Runtime (model.onnx) vs eager PyTorch, own processes",
                        ort_rate,
                        torch_rate,
                        "eager PyTorch",
                        "images/s",
                        target="no target: decides SERVING_ENGINE",
                    )
                )
    return rows


if __name__ == "__main__":
    print(table(json.loads(write(run(), "onnx").read_text())))
