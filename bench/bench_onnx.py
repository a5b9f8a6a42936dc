"""ONNX Runtime against eager PyTorch on this CPU: the exported model (``trainlib.export``) and the model it
came from, ResNet-18 and ResNet-50 at 224 px, batches of 1 and 8, images a second.

Each engine runs in a process of its own, one after the other: ONNX Runtime's worker threads spin after
a run, and interleaved with PyTorch in one process they slow whichever runs next. Both get every core.
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


def run() -> list[Row]:
    rows = []
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
