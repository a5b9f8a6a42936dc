"""The Lambda path: cold import of ``app``, the /predict handler's own overhead, the function zip."""

from __future__ import annotations

import base64
import io
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import Row, median_time

ROOT = Path(__file__).resolve().parent.parent
IMPORT = "import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"


def cold_import(module: str, repeats: int = 15) -> float:
    """Median seconds to import ``module`` in a fresh interpreter (what a Lambda cold start pays)."""
    samples = []
    for _ in range(repeats):
        out = subprocess.run(
            [sys.executable, "-c", IMPORT.format(module=module)], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
        samples.append(float(out.strip().splitlines()[-1]))
    return statistics.median(samples)


class _StubRuntime:
    """InvokeEndpoint answering at once: what is left is the handler's own work."""

    ANSWER = json.dumps({"predictions": [{"label": "beagle", "probability": 0.9}], "model": "bench"}).encode()

    def invoke(self, endpoint, body, content_type, accept):
        return self.ANSWER


def _proxy_event() -> dict:
    """An API Gateway proxy event POSTing a JPEG to a project's own route (no registry lookup)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (224, 224), "red").save(buffer, format="JPEG")
    event = {
        "resource": "/predict/{project}",
        "path": "/predict/bench",
        "httpMethod": "POST",
        "headers": {"Content-Type": "image/jpeg"},
        "multiValueHeaders": {},
        "queryStringParameters": {"top_k": "3"},
        "multiValueQueryStringParameters": {"top_k": ["3"]},
        "pathParameters": {"project": "bench"},
        "stageVariables": None,
        "requestContext": {
            "resourcePath": "/predict/{project}",
            "httpMethod": "POST",
            "requestId": "bench",
            "stage": "api",
        },
        "body": base64.b64encode(buffer.getvalue()).decode(),
        "isBase64Encoded": True,
    }
    return event


def handler_overhead(requests: int = 2000) -> tuple[float, float]:
    """Median seconds per /predict through the Lambda entry point (API Gateway proxy event), and
    the stub's own cost alone."""
    sys.path.insert(0, str(ROOT))
    import os

    os.environ.update(
        {
            "DATA_BUCKET": "droptrain-bench",
            "NOTIFY_TOPIC_ARN": "arn:aws:sns:us-east-1:123456789012:t",
            "SAGEMAKER_ROLE_ARN": "arn:aws:iam::123456789012:role/r",
            "TRAINING_IMAGE_URI": "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.10.0-gpu-py313",
            "INFERENCE_IMAGE_URI": "763104351884.dkr.ecr.us-east-1.amazonaws.com/ray:serve-ml-sagemaker-cpu-v1.4",
            "SOURCE_DIR_S3_URI": "s3://droptrain-bench/code/s.tar.gz",
            "ENDPOINT_PREFIX": "droptrain-bench",
            "POWERTOOLS_METRICS_NAMESPACE": "bench",
            "POWERTOOLS_LOG_LEVEL": "WARNING",
        }
    )
    from chalice_app import config
    from chalice_app.application import create_app
    from chalice_app.pipeline import Services

    # The Lambda entry point as Chalice builds it, with the endpoint's runtime stubbed.
    lambda_app = create_app(
        os.environ, Services(config.load(os.environ), None, None, _StubRuntime(), None, lambda s: None, None)
    )
    event = _proxy_event()

    class Context:
        function_name = "bench"
        aws_request_id = "bench"

    with open(os.devnull, "w") as devnull:
        stdout = sys.stdout
        sys.stdout = devnull  # powertools writes its logs and metrics to stdout
        try:
            response = lambda_app(event, Context())
            assert response["statusCode"] == 200, response
            per_request = median_time(lambda: lambda_app(event, Context()), repeats=requests, warmup=50)
        finally:
            sys.stdout = stdout
    stub = _StubRuntime()
    floor = median_time(lambda: stub.invoke("e", b"", "image/jpeg", "application/json"), repeats=requests, warmup=50)
    return per_request, floor


def function_zip_size() -> float:
    from droptrain import template as sam

    with tempfile.TemporaryDirectory() as tmp:
        layer = Path(tmp) / "layer.zip"
        layer.write_bytes(b"")  # the layer's size is not the function's
        template = sam.package("dev", Path(tmp) / "out", layer)
        return (template.parent / "deployment.zip").stat().st_size


def run() -> list[Row]:
    app_import = cold_import("app")
    chalice_import = cold_import("chalice")
    per_request, floor = handler_overhead()
    rows = [
        Row(
            "Lambda cold import of app",
            app_import * 1000,
            chalice_import * 1000,
            "import chalice alone",
            "ms",
            target="< 150 ms",
        ),
        Row(
            "/predict handler overhead per request (stubbed endpoint)",
            per_request * 1000,
            floor * 1000,
            "the stub call alone",
            "ms",
            target="< 5 ms",
        ),
    ]
    try:
        rows.append(Row("function zip", function_zip_size() / 1024, 5 * 1024, "the 5 MB bound", "KiB", target="< 5 MB"))
    except Exception as exc:  # noqa: BLE001 - a benchmark row that cannot be measured is reported, not fatal
        rows.append(Row("function zip", float("nan"), 0, f"not measured: {exc}", "KiB"))
    return rows


if __name__ == "__main__":
    from common import table, write

    rows = run()
    print(table(json.loads(write(rows, "lambda").read_text())))
