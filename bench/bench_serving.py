"""Serving: the local stack's latency and throughput against the model itself.

* latency: one 224 px JPEG, one request at a time, through (a) the local endpoint (InvokeEndpoint:
  input_fn, the batcher, predict, output_fn) and (b) the local API's ``POST /predict`` over HTTP
  (the Chalice handler, its checks, then the endpoint), against ``input_fn`` + ``predict_fn`` +
  ``output_fn`` called in-process on the same bytes. p50 and p99 over many requests.
* throughput: 8 concurrent HTTP clients (threads in a separate process, as clients are) against
  the bare model's best batched forward on tensors already in memory (batch 1 to 16, same threads);
  once with the endpoint's dynamic batching and once with batches of one, the alternative.

The references run in their own process: torch gives every thread that computes its own OpenMP
team, and on a small machine two teams throttle each other's spinning (ResNet-18 at 224 px on two
cores: 17 ms alone, 27 ms once a second thread has computed). In the server only the batcher's
thread computes; the benchmark's main thread must not either.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from common import Row, timings

ROOT = Path(__file__).resolve().parent.parent
SIZE = 224
CLIENT = Path(__file__).resolve().parent / "serving_client.py"


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def train_model(data: Path, work: Path) -> Path:
    """A real artifact at 224 px (head mode, one epoch: what it predicts does not matter here)."""
    from droptrain.container import JobPaths, package_dir, run_training

    paths = JobPaths(work / "job")
    lines: list[str] = []
    status = run_training(paths, {"training": data}, {
        "arch": "resnet18", "weights": "none", "train-mode": "head", "image-size": str(SIZE), "epochs": "1",
        "batch-size": "16", "workers": "0",
    }, "bench-serving-final", on_line=lines.append)
    if status != 0:
        raise RuntimeError("training the benchmark's model failed:\n" + "\n".join(lines[-20:]))
    return package_dir(paths.model, work / "model.tar.gz")


def deploy(runtime, archive: Path) -> str:
    runtime.bucket.put_file("runs/bench/final/model.tar.gz", archive)
    runtime.sagemaker.create_model({"ModelName": "bench", "PrimaryContainer": {
        "ModelDataUrl": runtime.bucket.uri("runs/bench/final/model.tar.gz")}})
    runtime.sagemaker.create_endpoint_config({"EndpointConfigName": "bench", "ProductionVariants": [{"ModelName": "bench"}]})
    name = runtime.env["ENDPOINT_NAME"]
    runtime.sagemaker.create_endpoint({"EndpointName": name, "EndpointConfigName": "bench", "Tags": []})
    runtime.endpoints.join()
    if runtime.endpoints.describe(name)["EndpointStatus"] != "InService":
        raise RuntimeError(f"the benchmark endpoint did not come up: {runtime.endpoints.describe(name)}")
    return name


def reference(archive: Path, image: Path) -> dict:
    """In a fresh process: in-process latencies of the model's own handlers, and the bare model's ceiling."""
    from droptrain.container import load_inference_module

    with tempfile.TemporaryDirectory() as tmp:
        import tarfile

        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        module = load_inference_module(Path(tmp) / "code")
        model = module.model_fn(tmp)
        body = image.read_bytes()

        def in_process():
            module.output_fn(module.predict_fn(module.input_fn(body, "image/jpeg"), model), "application/json")

        latencies = timings(in_process, 200, warmup=10)
        ceiling, batch = best_batched_forward(model.model, model.transform, module.input_fn(body, "image/jpeg"))
    return {"latencies": latencies, "ceiling": ceiling, "batch": batch}


def best_batched_forward(model, transform, image) -> tuple[float, int]:
    """Images/s of the bare model on tensors in memory, at its best batch size from 1 to 16."""
    x = transform(image)
    best = (0.0, 1)
    with torch.inference_mode():
        for batch in (1, 2, 4, 8, 16):
            data = x.unsqueeze(0).repeat(batch, 1, 1, 1)
            rounds = max(2, 32 // batch)
            seconds = statistics.median(timings(lambda: model(data), rounds, warmup=2))
            best = max(best, (batch / seconds, batch))
    return best


def clients(url: str, image: Path, concurrency: int, seconds: float) -> dict:
    out = subprocess.run([sys.executable, str(CLIENT), url, str(image), str(concurrency), str(seconds)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def run() -> list[Row]:
    from droptrain.demo import post_image
    from droptrain.local.batching import DynamicBatcher
    from droptrain.local.runtime import LocalRuntime
    from droptrain.synthetic import make_dataset

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_dataset(tmp / "data", classes=4, per_class=8, size=SIZE, seed=0)
        image = sorted((tmp / "data" / "test").rglob("*.jpg"))[0]
        body = image.read_bytes()
        archive = train_model(tmp / "data", tmp)
        runtime = LocalRuntime(tmp / "home", say=lambda line: None).start(port=0, watch=False)
        try:
            name = deploy(runtime, archive)
            serving = runtime.endpoints._serving[name]
            out = subprocess.run([sys.executable, __file__, "reference", str(archive), str(image)],
                                 capture_output=True, text=True, check=True).stdout
            measured = json.loads(out.strip().splitlines()[-1])
            reference, ceiling, best_batch = measured["latencies"], measured["ceiling"], measured["batch"]

            def endpoint():
                runtime.endpoints.invoke(name, body, "image/jpeg", "application/json")

            def http():
                status, _ = post_image(runtime.api_url, image)
                assert status == 200, status

            for label, fn in (("local endpoint (InvokeEndpoint path)", endpoint), ("local API, POST /predict over HTTP", http)):
                ours = timings(fn, 200, warmup=10)
                for q, name_q in ((0.5, "p50"), (0.99, "p99")):
                    rows.append(Row(f"serving, 224 px JPEG, one client: {label}, {name_q}", percentile(ours, q) * 1e3,
                                    percentile(reference, q) * 1e3, f"predict_fn in-process, {name_q}", "ms",
                                    target="overhead <= 15% at p50" if name_q == "p50" else ""))

            serving.batcher.batch_sizes.clear()
            batched = clients(runtime.api_url, image, 8, 15)
            sizes = list(serving.batcher.batch_sizes)
            rows.append(Row("serving, 8 concurrent HTTP clients, dynamic batching", batched["rps"], ceiling,
                            f"bare model's best batched forward (batch {best_batch})", "img/s", target=">= 0.7",
                            note=f"mean batch {statistics.mean(sizes):.1f}, p50 latency {batched['p50_ms']:.0f} ms, "
                                 f"{batched['errors']} errors"))
            # The alternative: the same stack answering one request per forward pass.
            serving.batcher.close()
            serving.batcher = DynamicBatcher(serving.batcher._run_batch, max_batch=1)
            unbatched = clients(runtime.api_url, image, 8, 15)
            rows.append(Row("serving, 8 concurrent HTTP clients, batches of one", unbatched["rps"], ceiling,
                            f"bare model's best batched forward (batch {best_batch})", "img/s",
                            note=f"p50 latency {unbatched['p50_ms']:.0f} ms, {unbatched['errors']} errors"))
        finally:
            runtime.stop()
    return rows


if __name__ == "__main__":
    if sys.argv[1:2] == ["reference"]:
        print(json.dumps(reference(Path(sys.argv[2]), Path(sys.argv[3]))))
    else:
        from common import table, write

        print(table(json.loads(write(run(), "serving").read_text())))
