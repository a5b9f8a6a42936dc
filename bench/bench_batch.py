"""Batch predictions: a local Batch Transform job's images/s against the bare model on the same images.

A ResNet-18 artifact at 224 px (trained as SageMaker trains it) predicts 160 JPEGs of 224 px through the
local SageMaker's transform job: the archive deployed on Ray Serve as its own application, each image
one record (16 in flight, batched by ``@serve.batch``), each answer written to the bucket. Its rate is
the records' (from the first answer written to the last: the job's deploy of the model, about as long
as an endpoint's, is in the note), against the bare model in a process of its own decoding the same
files (``trainlib.predictor``'s decode and transform) and running its best batched forward over them,
measured just before and just after each job. Three jobs, each between two such measurements, and the
medians reported: this machine's speed drifts by tens of percent over minutes, and one job's ratio
moved from 0.6 to 1.4 between runs.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from common import Row, timings

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "training")]
IMAGES = 160  # 4 classes x 40, every split's images
ROUNDS = 3
SIZE = 224


def bare(archive: Path, folder: Path) -> None:
    """(In its own process) images/s of decoding every image and its best batched forward over them."""
    import torch
    from bench_serving import best_batched_forward

    from trainlib.predictor import Classifier, decode

    bodies = [path.read_bytes() for path in sorted(folder.rglob("*.jpg"))]
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        classifier = Classifier.load(Path(tmp))
        _, batch = best_batched_forward(classifier.model, classifier.transform(decode(bodies[0])))

        def everything() -> None:
            tensors = [classifier.transform(decode(body)) for body in bodies]
            with torch.inference_mode():
                for start in range(0, len(tensors), batch):
                    classifier.model(torch.stack(tensors[start : start + batch]))

        seconds = statistics.median(timings(everything, 3, warmup=1))
    print(json.dumps({"rate": len(bodies) / seconds, "batch": batch}))


def bare_rate(archive: Path, folder: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "bare", str(archive), str(folder)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.splitlines()[-1])


def batch_job(runtime, archive: Path, folder: Path, token: str = "0123abcd") -> tuple[float, float]:
    """(records/s from the first answer written to the last, the job's whole seconds)."""
    from chalice_app import batch_requests, names

    run = "bench-1a2b3c4d"
    key = f"runs/{run}/final/model.tar.gz"
    runtime.bucket.put_file(key, archive)
    runtime.sagemaker.create_model({"ModelName": run, "PrimaryContainer": {"ModelDataUrl": runtime.bucket.uri(key)}})
    images = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*.jpg"))
    for image in images:
        runtime.bucket.put_file(f"batch/bench/{image}", folder / image)
    config = runtime._services.config
    job = names.batch_job_name(config.endpoint("bench"), token)
    manifest = batch_requests.manifest(config.data_bucket, "batch/bench/", images)
    runtime.bucket.put(f"{batch_requests.batch_prefix(job)}manifest.json", manifest)
    started = time.monotonic()
    runtime.sagemaker.create_transform_job(batch_requests.transform_job_request(config, job, run, "bench"))
    deadline = started + 3600
    while runtime.sagemaker.describe_transform_job(job)["TransformJobStatus"] == "InProgress":
        if time.monotonic() > deadline:
            raise RuntimeError("the batch job did not end in an hour")
        time.sleep(0.5)
    whole = time.monotonic() - started
    described = runtime.sagemaker.describe_transform_job(job)
    if described["TransformJobStatus"] != "Completed":
        raise RuntimeError(f"the batch job ended {described['TransformJobStatus']}: {described.get('FailureReason')}")
    out = runtime.bucket.path(f"{batch_requests.batch_prefix(job)}out")
    written = sorted(path.stat().st_mtime for path in out.rglob("*.out"))
    if len(written) != len(images):
        raise RuntimeError(f"{len(written)} answers for {len(images)} images")
    return (len(written) - 1) / (written[-1] - written[0]), whole


def run() -> list[Row]:
    from bench_serving import train_model

    from droptrain.local.runtime import LocalRuntime
    from droptrain.synthetic import make_dataset

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_dataset(tmp / "data", classes=4, per_class=IMAGES // 4, size=SIZE, seed=0)
        archive = train_model(tmp / "data", tmp / "work", "resnet18")
        bares = [bare_rate(archive, tmp / "data")]
        jobs = []
        runtime = LocalRuntime(tmp / "home", say=lambda line: None).start(port=0, watch=False)
        try:
            for round_ in range(ROUNDS):
                jobs.append(batch_job(runtime, archive, tmp / "data", f"0123abc{round_}"))
                bares.append(bare_rate(archive, tmp / "data"))
        finally:
            runtime.stop()
    ratios = [rate / ((bares[i]["rate"] + bares[i + 1]["rate"]) / 2) for i, (rate, _) in enumerate(jobs)]
    return [
        Row(
            f"batch job (local Batch Transform), ResNet-18 at {SIZE} px, {IMAGES} JPEGs, records phase",
            statistics.median(rate for rate, _ in jobs),
            statistics.median(b["rate"] for b in bares),
            "bare model: decode + best batched forward, same files, between the jobs (medians)",
            "img/s",
            target=">= 0.8",
            note=f"each job against the bare model around it: {', '.join(f'{r:.2f}' for r in ratios)}; "
            f"a whole job {statistics.median(whole for _, whole in jobs):.0f} s with the model's deploy on Ray Serve",
        )
    ]


if __name__ == "__main__":
    if sys.argv[1:2] == ["bare"]:
        bare(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        from common import table, write

        print(table(json.loads(write(run(), "batch").read_text())))
