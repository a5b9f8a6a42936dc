"""Batch predictions over a prefix of the bucket (docs/training-and-serving.md, "Batch predictions").

``start`` checks the request, pins the images it names in a manifest, and starts a SageMaker Batch
Transform job with the version's model (the endpoint's own artifact, so that a label never differs
between the two); ``batch_changed`` assembles the job's per-image outputs into one JSON Lines file,
``runs/batch/<job>/predictions.jsonl``, one line per image, when it ends. A bad image is a line with its
error, never a failed job; an image over the payload limit never reaches the job and gets its line here.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from chalice_app import batch_requests, cost, endpoint_requests, names
from chalice_app.adapters.errors import NotFoundError
from chalice_app.events import TransformJobStateChange
from chalice_app.notifications import Notification
from chalice_app.pipeline.services import Services, read_json
from chalice_app.pipeline.versions import UnknownVersionError, VersionError, project_versions

# What POST /predict takes (JPEG and PNG, by content): the objects of the prefix sent to the job.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
INPUT_ROOT = "batch"  # the images of batch jobs live under batch/ of the bucket, the role reads them there
MAX_TOP_K = 20  # the endpoint answers its 20 most probable labels
DEFAULT_TOP_K = 5
READERS = 16  # outputs read at once when assembling (each one small GET)
LISTED_FAILURES = 10  # failures named in batch.completed (all of them are in the file)


class BatchRequestError(VersionError):
    """A batch request that cannot be done; 400 unless a subclass says otherwise."""


class NoServingVersionError(VersionError):
    status, code = 409, "no_serving_version"


def _prefix(raw: Any, bucket: str) -> str:
    """The request's ``input_prefix`` as a key prefix of the project's bucket, ending in ``/``."""
    if not isinstance(raw, str) or not raw.strip():
        raise BatchRequestError('"input_prefix" must be a prefix of the bucket, such as "batch/<name>/"', "bad_request")
    prefix = raw.strip()
    if prefix.startswith("s3://"):
        owner, _, prefix = prefix[len("s3://") :].partition("/")
        if owner != bucket:
            raise BatchRequestError(f"input_prefix must be in the project's bucket {bucket}, not {owner[:80]!r}")
    prefix = prefix.lstrip("/")
    parts = prefix.rstrip("/").split("/")
    if not prefix.rstrip("/") or any(part in ("", ".", "..") for part in parts) or len(prefix) > 512:
        raise BatchRequestError(f"input_prefix {raw[:100]!r} is not a folder of the bucket", "bad_request")
    if parts[0] != INPUT_ROOT:  # where the jobs' role may read (droptrain/policies.py)
        raise BatchRequestError(f"input_prefix must be under {INPUT_ROOT}/ (batch/<name>/), not {raw[:100]!r}")
    return prefix.rstrip("/") + "/"


def _top_k(raw: Any) -> int:
    if raw is None:
        return DEFAULT_TOP_K
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= MAX_TOP_K:
        raise BatchRequestError(f"top_k must be an integer from 1 to {MAX_TOP_K}, got {raw!r}", "invalid_top_k")
    return raw


def _version(svc: Services, project: str, run: Any) -> dict[str, Any]:
    versions = project_versions(svc, project)  # UnknownProjectError: 404
    if run is None:
        serving = next((v for v in versions if v["serving"]), None)
        if serving is None:
            raise NoServingVersionError(f'project {project} serves no version: name one with "version"')
        return serving
    if isinstance(run, int) and not isinstance(run, bool):  # the version's number
        found = next((v for v in versions if v["version"] == run), None)
    elif isinstance(run, str):  # its run id
        found = next((v for v in versions if v["run_id"] == run), None)
    else:
        raise BatchRequestError('"version" must be a run id or a version number, as GET /projects/{project} lists them')
    if found is None:
        raise UnknownVersionError(f"project {project} has no version {str(run)[:80]!r}")
    return found


def start(svc: Services, project: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """``POST /projects/{project}/batch``: the job started, where it reads and where its output will be."""
    config, bucket = svc.config, svc.config.data_bucket
    unknown = sorted(set(body) - {"input_prefix", "version", "top_k"})
    if unknown:
        raise BatchRequestError(f"unknown field(s): {', '.join(unknown)[:200]}", "bad_request")
    prefix, top_k = _prefix(body.get("input_prefix"), bucket), _top_k(body.get("top_k"))
    slug = names.project_of(project)
    version = _version(svc, slug, body.get("version"))
    objects = [(key, size) for key, size in svc.s3.list_objects(bucket, prefix) if not key.endswith("/")]
    images = [(key[len(prefix) :], size) for key, size in objects if key.lower().endswith(IMAGE_SUFFIXES)]
    if not images:
        raise BatchRequestError(
            f"s3://{bucket}/{prefix} holds no images ({', '.join(IMAGE_SUFFIXES)}): {len(objects)} other object(s)",
            "no_images",
        )
    limit = batch_requests.MAX_PAYLOAD_MB * 1024 * 1024
    sent = [key for key, size in images if size <= limit]
    job = names.batch_job_name(config.endpoint(slug), uuid.uuid4().hex[:8])
    home = batch_requests.batch_prefix(job)
    record = {
        "job": job,
        "project": slug,
        "run_id": version["run_id"],
        "input_prefix": prefix,
        "top_k": top_k,
        "images": [key for key, _ in images],
        "too_large": [key for key, size in images if size > limit],
        "skipped": len(objects) - len(images),
    }
    svc.s3.put_if_absent(bucket, f"{home}job.json", json.dumps(record).encode())
    output = f"s3://{bucket}/{home}predictions.jsonl"
    if sent:
        svc.s3.put_if_absent(bucket, f"{home}manifest.json", batch_requests.manifest(bucket, prefix, sent))
        svc.sagemaker.create_model(
            endpoint_requests.model_request(config, version["run_id"], version["model_data"], version.get("dataset"))
        )
        svc.sagemaker.create_transform_job(
            batch_requests.transform_job_request(config, job, version["run_id"], slug, version.get("dataset"))
        )
    hosting = svc.prices.hourly(config.batch_instance_type, "Hosting") if svc.prices else None
    forecast = cost.batch_forecast(config.batch_instance_type, len(sent), hosting)
    svc.notifier.send(
        Notification(
            "batch.started",
            version["run_id"],
            version.get("dataset"),
            "InProgress",
            f"{slug}: predicting {len(images)} images of {prefix}",
            job=job,
            detail={**_summary(record), "output": output, "forecast": forecast},
            dedupe=f"batch/{job}",
        )
    )
    if not sent:  # every image is over the limit: nothing for a job to do, the lines are written now
        _assemble(svc, record, {})
    return {"job": job, "input": f"s3://{bucket}/{prefix}", "output": output, "version": version["run_id"]}


def _summary(record: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "project": record["project"],
        "version": record["run_id"],
        "input": record["input_prefix"],
        "images": len(record["images"]),
        "skipped_objects": record["skipped"],
    }


def batch_changed(svc: Services, event: TransformJobStateChange) -> str:
    """A batch job ended: its lines assembled and ``batch.completed`` sent, or ``batch.failed``."""
    record = read_json(svc, f"{batch_requests.batch_prefix(event.name)}job.json")
    if not isinstance(record, dict):
        return f"ignored: {event.name} is not a batch job of this stage"
    if event.status != "Completed":
        reason = event.failure_reason or f"the job ended {event.status}"
        summary = f"{record['project']}: batch failed: {reason}"
        _notify_end(svc, record, "batch.failed", event.status, summary, {"reason": reason})
        return f"batch {event.name} {event.status}"
    outputs = _outputs(svc, record)
    lines = _assemble(svc, record, outputs)
    return f"batch {event.name}: {len(lines)} lines"


def _outputs(svc: Services, record: Mapping[str, Any]) -> dict[str, str]:
    """Each sent image's output key. SageMaker writes ``<output path>/<key relative to the manifest's
    prefix>.out``; its docs' example also shows the input's own prefix kept in front, so that part is
    found once, from the longest image key (the one least likely to match another's tail)."""
    bucket, out = svc.config.data_bucket, f"{batch_requests.batch_prefix(record['job'])}out/"
    written = [key[len(out) :] for key, _ in svc.s3.list_objects(bucket, out)]
    present = set(written)
    lead = ""
    for image in sorted(record["images"], key=len, reverse=True):
        tail = f"{image}.out"
        match = next((w for w in written if w == tail or w.endswith("/" + tail)), None)
        if match is not None:
            lead = match[: -len(tail)]
            break
    return {image: f"{out}{lead}{image}.out" for image in record["images"] if f"{lead}{image}.out" in present}


def _line(svc: Services, record: Mapping[str, Any], image: str, output: str | None) -> dict[str, Any]:
    key = f"{record['input_prefix']}{image}"
    if image in record["too_large"]:
        limit = batch_requests.MAX_PAYLOAD_MB
        return _error_line(key, "payload_too_large", f"the image is over {limit} MB, the limit of a prediction")
    if output is None:
        return _error_line(key, "no_output", "the job wrote no answer for this image")
    try:
        answer = json.loads(svc.s3.get(svc.config.data_bucket, output))
    except (NotFoundError, ValueError) as exc:
        return _error_line(key, "no_output", f"the job's answer for this image is unreadable: {exc}")
    if not isinstance(answer, dict):
        return _error_line(key, "no_output", "the job's answer for this image is not a JSON object")
    predictions = answer.get("predictions") or []
    return {
        "key": key,
        "predictions": predictions[: record["top_k"]],
        "abstained": answer.get("abstained"),
        "error": answer.get("error"),
    }


def _error_line(key: str, code: str, message: str) -> dict[str, Any]:
    return {"key": key, "predictions": [], "abstained": None, "error": {"code": code, "message": message}}


def _assemble(svc: Services, record: Mapping[str, Any], outputs: Mapping[str, str]) -> list[dict[str, Any]]:
    """``predictions.jsonl`` (in the images' key order) and ``batch.completed``."""
    home, bucket = batch_requests.batch_prefix(record["job"]), svc.config.data_bucket
    with ThreadPoolExecutor(READERS) as pool:
        lines = list(pool.map(lambda image: _line(svc, record, image, outputs.get(image)), record["images"]))
    body = "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines)
    svc.s3.put_if_absent(bucket, f"{home}predictions.jsonl", body.encode())  # a redelivery finds it written
    failures = [{"key": line["key"], "error": line["error"]} for line in lines if line["error"]]
    detail = {
        "predicted": len(lines) - len(failures),
        "failed": len(failures),
        "failures": failures[:LISTED_FAILURES],
        "output": f"s3://{bucket}/{home}predictions.jsonl",
    }
    summary = f"{record['project']}: {len(lines) - len(failures)} of {len(lines)} images predicted"
    _notify_end(svc, record, "batch.completed", "Completed", summary, detail)
    return lines


def _notify_end(
    svc: Services, record: Mapping[str, Any], event: str, status: str, summary: str, detail: Mapping[str, Any]
) -> None:
    svc.notifier.send(
        Notification(
            event,
            record["run_id"],
            None,
            status,
            summary,
            job=record["job"],
            detail={**_summary(record), **detail},
            dedupe=f"batch/{record['job']}",
        )
    )
