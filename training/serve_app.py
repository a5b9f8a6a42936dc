"""The Ray Serve application that serves a droptrain model (docs/architecture.md, "Model artifact and serving").

``train.py`` copies this module, with the ``trainlib`` modules it imports, to the root of the model
artifact next to ``model.pth``, ``model.json`` and ``config.yaml``. AWS's Ray Serve inference
container extracts ``model.tar.gz`` to ``/opt/ml/model/``, puts that folder on ``PYTHONPATH``,
and deploys ``config.yaml`` (``import_path: serve_app:app``, ``route_prefix: /``); its SageMaker
adapter forwards ``/invocations`` to ``/``. The local runtime deploys the same archive the same
way (``droptrain/local/engines/serving.py``). The model is found next to this file, never at a fixed
path, so the archive serves from any folder.

``POST /`` with JPEG or PNG bytes (recognised by content, whatever the Content-Type) answers 200
``{"predictions": [{"label", "probability"}, ...], "abstained": false, "model": "<run-id>"}`` with the
20 most probable labels, most probable first (probabilities calibrated, ``abstained`` by the model's
thresholds: ``trainlib.calibration``). Options come as a query string, in the URL or in the
``X-Amzn-SageMaker-Custom-Attributes`` header (an InvokeEndpoint's ``CustomAttributes``): ``min_confidence``
(0-1) replaces the model's floor for this request, ``explain=true`` adds the top class's Grad-CAM
``explanation`` (``trainlib.explain``). An empty, undecodable or oversized body, or an option out of
range, gets its 4xx and the JSON error (``trainlib.predictor``); no bad input ever causes a 5xx.
A request that accepts ``application/jsonlines`` (a Batch Transform job's records) is answered 200 with
one line, ``{"predictions", "abstained", "error"}``, the error null or the one above: a bad image among
thousands is a line of the job's output, not a failed job.
Concurrent requests share forward passes through ``@serve.batch``; a lone request runs at once (no
wait for company). A batch holds at most as many requests as the model runs fastest per image at on
this machine (timed when the replica starts, up to 16). What that gives, and what Ray costs a request
before any model work in each of its modes, is measured by ``make bench`` (docs/performance.md).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from trainlib.errors import (
    BATCH_ACCEPT,
    MAX_BODY_BYTES,
    OPTIONS_HEADER,
    PayloadTooLargeError,
    PredictionError,
    as_batch_line,
)

log = logging.getLogger("ray.serve")
HERE = Path(__file__).resolve().parent
MAX_BATCH = 16


def _json(status: int, payload: dict[str, Any]) -> Response:
    return Response(json.dumps(payload), status_code=status, media_type="application/json")


@serve.deployment(max_ongoing_requests=4 * MAX_BATCH)
class ImageClassifier:
    """One model per replica, loaded once. The forward pass runs on the event loop that runs this code
    (its own thread by default, the replica's in Ray Serve's high-throughput mode): while a batch
    computes, new requests wait and then enter the next batch together, one batch at a time."""

    def __init__(self, model_dir: str | None = None):
        # Imported here, not above: Serve imports this module once more, in a process of its own, only to
        # build the application before any replica starts, and torch there added seconds to every deploy.
        import torch

        from trainlib.predictor import Classifier, Options, decode

        self._torch, self._decode, self._options = torch, decode, Options
        self.classifier = Classifier.load(Path(model_dir) if model_dir else HERE)
        # Ray starts replicas with OMP_NUM_THREADS=1 unless they reserve CPUs, and OpenMP's thread count
        # is per thread: the thread that computes is given every core of the instance.
        self._cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        # Batches no bigger than the model runs fastest at here (timed once, at start): a larger one would
        # answer fewer images a second, and keep its first requests waiting for the last.
        torch.set_num_threads(self._cores)
        largest = self.classifier.fastest_batch(MAX_BATCH)
        self._predict.set_max_batch_size(largest)
        log.info("batches of up to %d requests: the fastest per image on this machine", largest)

    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=0.0)
    async def _predict(self, images: list) -> list[dict[str, Any]]:
        self._torch.set_num_threads(self._cores)
        return self.classifier.predict(images)

    async def answer(self, body: bytes, options: list[tuple[str, str]] = ()) -> tuple[int, dict[str, Any]]:
        """``(HTTP status, JSON body)`` for the image bytes and the request's options (``explain``,
        ``min_confidence``: the query string's, or the CustomAttributes' that SageMaker passes on)."""
        try:
            asked = self._options.parse(options)
            image = self._decode(body)
        except PredictionError as exc:
            return exc.status, exc.body()
        try:
            if asked.explain:  # one backward pass of its own: never batched with plain predictions
                self._torch.set_num_threads(self._cores)
                answer = self.classifier.explain(image)
            else:
                answer = await self._predict(image)
            if asked.min_confidence is not None:
                answer = {**answer, "abstained": self.classifier.abstains(answer, asked.min_confidence)}
            return 200, answer
        except Exception:  # noqa: BLE001 - a bug, not the caller's fault: logged, answered as a 500 without a trace
            log.exception("prediction failed")
            return 500, PredictionError("the model failed on this image; see the endpoint's logs").body()

    async def __call__(self, request: Request) -> Response:
        status, payload = await self._respond(request)
        if request.headers.get("accept", "").split(";")[0].strip().lower() == BATCH_ACCEPT:
            # A Batch Transform record: one image's line, its error in it. A 4xx would fail the whole job.
            return _json(200, as_batch_line(payload))
        return _json(status, payload)

    async def _respond(self, request: Request) -> tuple[int, dict[str, Any]]:
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                return 400, {"error": {"code": "bad_request", "message": "malformed Content-Length"}}
            if int(declared) > MAX_BODY_BYTES:  # refused before a byte of it is read
                error = PayloadTooLargeError(f"the image is {declared} bytes; the limit is {MAX_BODY_BYTES} bytes")
                return error.status, error.body()
        options = [*parse_qsl(request.headers.get(OPTIONS_HEADER, "")), *request.query_params.multi_items()]
        return await self.answer(await request.body(), options)


app = ImageClassifier.bind()
