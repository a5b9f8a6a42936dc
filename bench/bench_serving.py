"""Serving through Ray Serve: the local stack's latency and throughput against the model itself.

For two models at 224 px: ResNet-18, and ResNet-50, the architecture a stage trains by default.

* latency: one 224 px JPEG, one request at a time, through (a) the local endpoint (InvokeEndpoint:
  the endpoint's routing, then the body POSTed to the application's HTTP route, as SageMaker posts
  it to the container), (b) that HTTP route alone, on one connection (what the container's SageMaker
  adapter forwards ``/invocations`` to), and (c) the local API's ``POST /predict`` over HTTP (the
  Chalice handler, its checks, then the endpoint), against decoding and predicting the same bytes
  in-process (``trainlib.predictor``). p50 and p99 over many requests.
* throughput: 8 concurrent HTTP clients (threads in a separate process, as clients are, each keeping
  its connection as a client with a session does; one row opens one per request) against the
  bare model's best batched forward on tensors already in memory (batch 1 to 16); through the local
  API and on the application's route, with ``@serve.batch`` as shipped and, for comparison, the same
  application with batches of one.

* floor: an empty body through the local endpoint's call, answered 400 by the application before any model work,
  each sent right after a prediction (as the one-client loop sends them): what Ray's hops cost
  here, whatever the model.

The references run in their own process: torch gives every thread that computes its own OpenMP
team, and on a small machine two teams throttle each other (ResNet-18 at 224 px on two cores:
17 ms alone, 27 ms once a second thread has computed). The server's model lives in the Ray
replica's process, where one thread computes. That process stays up while its model is measured and is
measured in turns with ours (blocks of requests, alternately; the ceiling just before and just
after each client run): this machine's speed drifts by tens of percent over minutes, and a ratio
of two time windows would measure the drift as much as the server.
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch
from common import Row, timings

ROOT = Path(__file__).resolve().parent.parent
SIZE = 224
CLIENT = Path(__file__).resolve().parent / "serving_client.py"
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "training")]


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


ARCHS = ("resnet18", "resnet50")


def train_model(data: Path, work: Path, arch: str = "resnet18") -> Path:
    """A real artifact at 224 px, trained as SageMaker trains (head mode, one epoch: what it
    predicts does not matter)."""
    from droptrain.local.sagemaker.jobs import package_dir
    from helpers import run_training_job

    lines: list[str] = []
    work.mkdir(parents=True, exist_ok=True)
    paths, status = run_training_job(
        work,
        data,
        {
            "arch": arch,
            "weights": "none",
            "train-mode": "head",
            "image-size": str(SIZE),
            "epochs": "1",
            "batch-size": "16",
            "workers": "0",
        },
        "bench-serving-final",
        on_line=lines.append,
    )
    if status != 0:
        raise RuntimeError("training the benchmark's model failed:\n" + "\n".join(lines[-20:]))
    return package_dir(paths.model, work / "model.tar.gz")


def reference(archive: Path, image: Path) -> None:
    """The reference worker (in its own process): decode and predict in-process, and the bare model's
    ceiling, each on request; reads commands on stdin and answers one JSON line each."""
    from trainlib.predictor import Classifier, decode

    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        classifier = Classifier.load(Path(tmp))
        body = image.read_bytes()
        x = classifier.transform(decode(body))
        print(json.dumps("ready"), flush=True)
        for line in sys.stdin:
            command, *args = line.split()
            if command == "latencies":
                answer = timings(lambda: classifier.predict([decode(body)]), int(args[0]), warmup=1)
            else:  # "ceiling [batch]": every batch size from 1 to 16, or the one given
                answer = best_batched_forward(classifier.model, x, [int(a) for a in args] or (1, 2, 4, 8, 16))
            print(json.dumps(answer), flush=True)


class Reference:
    """The reference worker, driven from the benchmark's process."""

    def __init__(self, archive: Path, image: Path):
        self.process = subprocess.Popen(
            [sys.executable, __file__, "reference", str(archive), str(image)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.best_batch = 0
        if self._ask("") != "ready":
            raise RuntimeError("the reference worker did not start")

    def _ask(self, command: str):
        if command:
            self.process.stdin.write(command + "\n")
            self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the reference worker exited ({self.process.wait()})")
        return json.loads(line)

    def latencies(self, n: int) -> list[float]:
        return self._ask(f"latencies {n}")

    def ceiling(self) -> float:
        """Images/s at the model's best batch size (found on the first call)."""
        rate, self.best_batch = self._ask(f"ceiling {self.best_batch}" if self.best_batch else "ceiling")
        return rate

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


def in_turns(fn, reference: Reference, blocks: int = 10, per_block: int = 20) -> tuple[list[float], list[float]]:
    """Seconds per call of ``fn`` and of the in-process reference, in alternating blocks."""
    ours, theirs = [], []
    timings(fn, 0, warmup=10)
    for _ in range(blocks):
        theirs += reference.latencies(per_block)
        ours += timings(fn, per_block, warmup=1)
    return ours, theirs


def best_batched_forward(model, x, batches=(1, 2, 4, 8, 16)) -> tuple[float, int]:
    """Images/s of the bare model on tensors in memory, at its best of the ``batches`` sizes."""
    best = (0.0, 1)
    with torch.inference_mode():
        for batch in batches:
            data = x.unsqueeze(0).repeat(batch, 1, 1, 1)
            rounds = max(2, 32 // batch)
            seconds = statistics.median(timings(lambda data=data: model(data), rounds, warmup=2))
            best = max(best, (batch / seconds, batch))
    return best


def clients(url: str, image: Path, concurrency: int, seconds: float, connections: str = "kept") -> dict:
    """``connections``: "kept" (each client keeps its connection, as an HTTP client with a session does)
    or "new" (a new connection for every request)."""
    out = subprocess.run(
        [sys.executable, str(CLIENT), url, str(image), str(concurrency), str(seconds), connections],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def unbatched_copy(runtime, config: str) -> str:
    """The same application with batches of one, deployed beside it: what @serve.batch is weighed against."""
    source = runtime.endpoints.root / config
    target = source.with_name(f"{config}-batches-of-one")
    shutil.copytree(source, target)
    app = (target / "serve_app.py").read_text()
    (target / "serve_app.py").write_text(re.sub(r"^MAX_BATCH = \d+$", "MAX_BATCH = 1", app, flags=re.M))
    runtime.serving.deploy("bench-batches-of-one", target)
    return f"{runtime.serving.url}/bench-batches-of-one"


def measure(runtime, arch: str, data: Path, work: Path, image: Path) -> list[Row]:
    from helpers import deploy_archive

    archive = train_model(data, work / arch, arch)
    config = f"bench-{arch}"
    endpoint = deploy_archive(runtime, archive, config)
    reference = Reference(archive, image)
    try:
        return latency_rows(runtime, arch, endpoint, config, image, reference) + throughput_rows(
            runtime, arch, config, image, reference
        )
    finally:
        reference.close()


def latency_rows(runtime, arch: str, endpoint: str, config: str, image: Path, reference: Reference) -> list[Row]:
    import http.client

    from droptrain.api_client import post_image

    body = image.read_bytes()
    app = runtime.endpoints._app_name(config)
    connection = http.client.HTTPConnection(runtime.serving.host, runtime.serving.port, timeout=60)

    def invoke():
        runtime.endpoints.invoke(endpoint, body, "image/jpeg", "application/json")

    def ray_route():
        connection.request("POST", f"/{app}", body=body, headers={"Content-Type": "image/jpeg"})
        response = connection.getresponse()
        response.read()
        assert response.status == 200, response.status

    def api():
        status, _ = post_image(runtime.api_url, image, project="bench")
        assert status == 200, status

    rows = []
    for label, fn in (
        ("local endpoint (InvokeEndpoint: HTTP to the application's route)", invoke),
        ("Ray Serve HTTP route (the container's /invocations path)", ray_route),
        ("local API, POST /predict/{project} over HTTP", api),
    ):
        ours, theirs = in_turns(fn, reference)
        for q, name_q in ((0.5, "p50"), (0.99, "p99")):
            rows.append(
                Row(
                    f"serving {arch}, 224 px JPEG, one client: {label}, {name_q}",
                    percentile(ours, q) * 1e3,
                    percentile(theirs, q) * 1e3,
                    f"decode + predict in-process, {name_q}, in turns",
                    "ms",
                    target="overhead <= 15% at p50" if name_q == "p50" and "InvokeEndpoint" in label else "",
                )
            )
    connection.close()
    rows.append(_floor_row(runtime, arch, app, invoke, reference))
    return rows


def _floor_row(runtime, arch: str, app: str, invoke, reference: Reference) -> Row:
    """Serve's own round trip: an empty body is answered 400 before any model work."""

    def empty_after_prediction() -> float:
        invoke()
        began = time.perf_counter()
        status, _ = runtime.serving.call(app, b"")
        assert status == 400, status
        return time.perf_counter() - began

    floor = [empty_after_prediction() for _ in range(100)]
    return Row(
        f"serving {arch}: Ray Serve round trip, empty body answered 400 before any model work, "
        "each right after a prediction, p50",
        percentile(floor, 0.5) * 1e3,
        percentile(reference.latencies(100), 0.5) * 1e3,
        "decode + predict in-process, p50",
        "ms",
        note="the floor of every request's overhead here, whatever the model",
    )


def throughput_rows(runtime, arch: str, config: str, image: Path, reference: Reference) -> list[Row]:
    app = runtime.endpoints._app_name(config)

    def against_ceiling(what: str, url: str, target: str = "", connections: str = "kept") -> Row:
        before = reference.ceiling()
        result = clients(url, image, 8, 15, connections)
        ceiling = (before + reference.ceiling()) / 2
        return Row(
            f"serving {arch}, 8 concurrent HTTP clients, {what}",
            result["rps"],
            ceiling,
            f"bare model's best batched forward (batch {reference.best_batch}), just before and after",
            "img/s",
            target=target,
            note=f"p50 latency {result['p50_ms']:.0f} ms, {result['errors']} errors",
        )

    rows = [
        against_ceiling("local API, POST /predict, @serve.batch", f"{runtime.api_url}/predict?top_k=3", ">= 0.85"),
        against_ceiling("Ray Serve route, @serve.batch", f"{runtime.serving.url}/{app}", ">= 0.85"),
    ]
    if arch == "resnet18":
        rows.append(
            against_ceiling(
                "local API, POST /predict, @serve.batch, a new connection for every request",
                f"{runtime.api_url}/predict?top_k=3",
                connections="new",
            )
        )
        # The local API's own server under a burst: no connection refused or reset, and the slowest
        # requests queue behind the model rather than behind the listen backlog.
        burst = clients(f"{runtime.api_url}/predict?top_k=3", image, 16, 15, "new")
        rows.append(
            Row(
                f"local API, 16 concurrent clients, POST /predict ({arch}): p99 latency",
                burst["p99_ms"],
                burst["p50_ms"],
                "p50 latency, same run",
                "ms",
                target="p99 <= 5x p50, 0 errors",
                note=f"{burst['errors']} errors in {burst['requests']} requests",
            )
        )
    rows.append(against_ceiling("Ray Serve route, batches of one", unbatched_copy(runtime, config)))
    runtime.serving.delete("bench-batches-of-one")
    return rows


def run() -> list[Row]:
    from droptrain.local.runtime import LocalRuntime
    from droptrain.synthetic import make_dataset

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_dataset(tmp / "data", classes=4, per_class=8, size=SIZE, seed=0)
        image = sorted((tmp / "data" / "test").rglob("*.jpg"))[0]
        runtime = LocalRuntime(tmp / "home", say=lambda line: None).start(port=0, watch=False)
        try:
            for arch in ARCHS:
                rows += measure(runtime, arch, tmp / "data", tmp / "work", image)
        finally:
            runtime.stop()
    return rows


if __name__ == "__main__":
    if sys.argv[1:2] == ["reference"]:
        reference(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        from common import table, write

        print(table(json.loads(write(run(), "serving").read_text())))
