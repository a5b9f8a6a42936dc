"""The commands that talk to the REST API, the local stack's or a deployed stage's (``--url``):
``droptrain predict``, ``droptrain batch`` and ``droptrain rollback``. They need only the base install."""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any


def post_image(
    url: str,
    image: Path,
    top_k: int = 3,
    timeout: float = 30,
    project: str | None = None,
    api_key: str | None = None,
    options: dict[str, str] | None = None,
) -> tuple[int, dict]:
    """``options``: more query parameters (``min_confidence``, ``explain``)."""
    content_type = "image/png" if image.suffix.lower() == ".png" else "image/jpeg"
    path = f"/predict/{urllib.parse.quote(project, safe='')}" if project else "/predict"
    query = urllib.parse.urlencode({"top_k": top_k, **(options or {})})
    return call_api(url, f"{path}?{query}", "POST", image.read_bytes(), content_type, timeout, api_key)


def call_api(
    url: str,
    path: str,
    method: str = "GET",
    body: bytes | None = None,
    content_type: str | None = None,
    timeout: float = 30,
    api_key: str | None = None,
) -> tuple[int, dict]:
    """``(status, JSON body)`` of one call to the REST API (the local stack's or a stage's)."""
    headers = {"Content-Type": content_type} if content_type else {}
    if api_key:
        headers["x-api-key"] = api_key
    request = urllib.request.Request(f"{url.rstrip('/')}{path}", data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {"error": {"code": "http_error", "message": exc.reason}}


def api_commands(sub: Any) -> None:
    """What talks to the REST API: the local stack's, or a deployed stage's (--url)."""
    p = sub.add_parser("predict", help="POST an image to the API and print the top-k")
    p.add_argument("image", type=Path, help="a JPEG or PNG file")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the API (droptrain up's, or a deployed stage's)")
    p.add_argument("--top-k", type=int, default=5, help="how many labels (1-20)")
    p.add_argument(
        "--min-confidence", default=None, help="abstain below this probability (0-1; default: the model's own)"
    )
    p.add_argument(
        "--explain",
        type=Path,
        default=None,
        metavar="PNG",
        help="also ask for the top label's Grad-CAM heatmap and write it to this PNG file",
    )
    p.add_argument(
        "--project",
        default=None,
        help="the project (dataset name) whose model answers; "
        "default: the only project, or the stage's DEFAULT_PROJECT",
    )
    p.add_argument(
        "--api-key", default=None, help="x-api-key for a stage that requires one (default: $DROPTRAIN_API_KEY)"
    )
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("batch", help="predict every image under a prefix of the bucket, as one job (batch.* notify)")
    p.add_argument("prefix", help="the images' prefix in the bucket: batch/<name>/ (or s3://BUCKET/batch/<name>/)")
    p.add_argument("--project", required=True, help="the project (dataset name) whose model predicts")
    p.add_argument("--version", default=None, metavar="RUN_ID", help="this run's version (default: the serving one)")
    p.add_argument("--top-k", type=int, default=None, help="how many labels per image (1-20; default 5)")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the API (droptrain up's, or a deployed stage's)")
    p.add_argument(
        "--api-key", default=None, help="x-api-key for a stage that requires one (default: $DROPTRAIN_API_KEY)"
    )
    p.set_defaults(func=_cmd_batch)
    _version_commands(sub)


def _version_commands(sub: Any) -> None:
    """What makes a new version of a project serve: retraining it, rolling it back."""
    p = sub.add_parser(
        "retrain",
        help="a new run from the serving version's weights, on the dataset and the review queue's labelled images",
    )
    p.add_argument("project", help="the project (dataset name)")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the API (droptrain up's, or a deployed stage's)")
    p.add_argument(
        "--api-key", default=None, help="x-api-key for a stage that requires one (default: $DROPTRAIN_API_KEY)"
    )
    p.set_defaults(func=_cmd_retrain)

    p = sub.add_parser(
        "rollback",
        help="approve and deploy an earlier version of a project (default: the newest "
        "approved one before the serving one)",
    )
    p.add_argument("project", help="the project (dataset name)")
    p.add_argument(
        "--to", default=None, metavar="RUN_ID", help="deploy this run's version instead (approving it if it was held)"
    )
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the API (droptrain up's, or a deployed stage's)")
    p.add_argument(
        "--api-key", default=None, help="x-api-key for a stage that requires one (default: $DROPTRAIN_API_KEY)"
    )
    p.set_defaults(func=_cmd_rollback)


def _cmd_predict(args: argparse.Namespace) -> int:
    if not args.image.is_file():
        print(f"droptrain predict: {args.image} does not exist", file=sys.stderr)
        return 1
    try:
        status, body = post_image(
            args.url.rstrip("/"),
            args.image,
            args.top_k,
            project=args.project,
            api_key=args.api_key or os.environ.get("DROPTRAIN_API_KEY"),
            options={
                **({"min_confidence": args.min_confidence} if args.min_confidence is not None else {}),
                **({"explain": "true"} if args.explain else {}),
            },
        )
    except OSError as exc:
        print(f"droptrain predict: cannot reach {args.url} ({exc}); is droptrain up running?", file=sys.stderr)
        return 1
    if status != 200:
        print(f"droptrain predict: {status} {body.get('error', {}).get('message', body)}", file=sys.stderr)
        return 1
    for p in body["predictions"]:
        print(f"{p['probability']:.4f}  {p['label']}")
    if body.get("abstained"):
        print("not sure: the best label is below the model's confidence threshold")
    if args.explain and body.get("explanation"):
        explanation = body["explanation"]
        args.explain.write_bytes(base64.b64decode(explanation["heatmap_png"]))
        x, y = explanation["peak"]
        print(
            f"evidence: peak at x={x} y={y} ({explanation['method']}, {explanation['layer']}); heatmap {args.explain}"
        )
    print(f"(model {body['model']})")
    return 0


def _cmd_batch(args: argparse.Namespace) -> int:
    """Start a batch prediction job through the API; its end is announced (batch.completed, batch.failed)."""
    request = {"input_prefix": args.prefix}
    request.update({k: v for k, v in (("version", args.version), ("top_k", args.top_k)) if v is not None})
    path = f"/projects/{urllib.parse.quote(args.project, safe='')}/batch"
    try:
        status, body = call_api(
            args.url,
            path,
            "POST",
            json.dumps(request).encode(),
            "application/json",
            api_key=args.api_key or os.environ.get("DROPTRAIN_API_KEY"),
        )
    except OSError as exc:
        print(f"droptrain batch: cannot reach {args.url} ({exc}); is droptrain up running?", file=sys.stderr)
        return 1
    if status != 202:
        print(f"droptrain batch: {status} {body.get('error', {}).get('message', body)}", file=sys.stderr)
        return 1
    print(f"batch job {body['job']}: {body['input']} with version {body['version']}")
    print(f"its predictions, one JSON line per image, will be at {body['output']} (batch.completed says when)")
    return 0


def _cmd_retrain(args: argparse.Namespace) -> int:
    """Start a warm-started run through the API; the gate judges it as any run."""
    path = f"/projects/{urllib.parse.quote(args.project, safe='')}/retrain"
    try:
        key = args.api_key or os.environ.get("DROPTRAIN_API_KEY")
        status, body = call_api(args.url, path, "POST", b"{}", "application/json", api_key=key)
    except OSError as exc:
        print(f"droptrain retrain: cannot reach {args.url} ({exc}); is droptrain up running?", file=sys.stderr)
        return 1
    if status != 202:
        print(f"droptrain retrain: {status} {body.get('error', {}).get('message', body)}", file=sys.stderr)
        return 1
    reviewed = sum(sum(splits.values()) for splits in body["reviewed_images"].values())
    new = f"; new classes: {', '.join(body['new_classes'])}" if body["new_classes"] else ""
    print(f"{body['project']}: run {body['run_id']} from {body['warm_start_from']}, {reviewed} reviewed images{new}")
    print(f"job {body['job']}; the gate judges it against the serving version (model.approved or model.held)")
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    """Approve and deploy an earlier version through the API (the local stack's, or a stage's)."""
    path = (
        f"/projects/{urllib.parse.quote(args.project, safe='')}/versions/"
        f"{urllib.parse.quote(args.to or 'previous', safe='')}/deploy"
    )
    try:
        status, body = call_api(
            args.url, path, "POST", b"", "application/json", api_key=args.api_key or os.environ.get("DROPTRAIN_API_KEY")
        )
    except OSError as exc:
        print(f"droptrain rollback: cannot reach {args.url} ({exc}); is droptrain up running?", file=sys.stderr)
        return 1
    if status >= 400:
        print(f"droptrain rollback: {status} {body.get('error', {}).get('message', body)}", file=sys.stderr)
        return 1
    was = f" (was {body['previous']})" if body.get("previous") else ""
    print(f"{body['project']}: version {body['version']} ({body['run_id']}){was}: {body['action']}")
    return 0
