"""The drift check: a SageMaker Processing job in the audit's image (docs/operations.md, "Drift").

The serving version's ``model.tar.gz`` and the project's captures in; ``drift.json`` out: the images
captured after ``--since`` embedded by the model as serving preprocesses them, against the reference its
final job kept (``trainlib.drift``). A capture whose image does not decode is counted, not fatal.

    python drift_check.py --model DIR --captures DIR --since 2026-12-06T15:00:00Z --out DIR
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import torch

from trainlib import drift
from trainlib.errors import PredictionError
from trainlib.models import backbone_of, head_of
from trainlib.predictor import Classifier, decode

EXAMPLES = 5  # captured images named in the verdict, the farthest from the reference first


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="folder with model.tar.gz, or the model itself")
    parser.add_argument("--captures", type=Path, required=True, help="folder of SageMaker capture files (*.jsonl)")
    parser.add_argument("--since", default="", help="only captures after this time (ISO 8601, UTC); empty: all")
    parser.add_argument("--out", type=Path, required=True, help="folder to write drift.json into")
    return parser.parse_args(argv)


def captured_images(folder: Path, since: str) -> list[dict[str, Any]]:
    """Each capture line after ``since``: its file, event id, time and image bytes. The record is
    SageMaker's (chalice_app/capture.py writes and reads it for the API; this reads the same fields)."""
    found = []
    for path in sorted(folder.rglob("*.jsonl")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
                given = record["captureData"]["endpointInput"]
                when = str(record.get("eventMetadata", {}).get("inferenceTime", ""))
                body = base64.b64decode(given["data"], validate=True) if given.get("encoding") == "BASE64" else None
            except (ValueError, KeyError, TypeError, binascii.Error):
                continue
            if body is not None and when > since:
                event = str(record.get("eventMetadata", {}).get("eventId", ""))
                found.append(
                    {"file": path.relative_to(folder).as_posix(), "event_id": event, "time": when, "body": body}
                )
    return found


def model_dir(given: Path, work: Path) -> Path:
    archive = given / "model.tar.gz" if given.is_dir() else given
    if not archive.is_file():
        return given
    with tarfile.open(archive) as tar:
        tar.extractall(work, filter="data")
    return work


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as work:
        where = model_dir(args.model, Path(work))
        reference = drift.load_reference(where)
        classifier = Classifier.load(where, device="cpu")
    captures = captured_images(args.captures, args.since)
    usable, tensors, undecodable = [], [], 0
    for item in captures:
        try:
            tensors.append(classifier.transform(decode(item["body"])))
            usable.append(item)
        except PredictionError:
            undecodable += 1
    until = max((item["time"] for item in captures), default=args.since)
    base = {"since": args.since, "until": until, "undecodable": undecodable, "model": classifier.run_id}
    if reference is None:
        return {**base, "status": "no_reference", "sample_size": len(usable)}
    features = (
        drift.embed(backbone_of(classifier.model, classifier.arch), torch.stack(tensors).split(64))
        if tensors
        else torch.empty(0, 1)
    )
    with torch.no_grad():
        predicted = head_of(classifier.model, classifier.arch)(features).argmax(1) if tensors else torch.empty(0)
    verdict = drift.check(reference, features, predicted)
    if tensors:
        centre = reference["embeddings"].float().mean(0)
        farthest = (features - centre).norm(dim=1).argsort(descending=True)[:EXAMPLES].tolist()
        verdict["examples"] = [{k: usable[i][k] for k in ("file", "event_id", "time")} for i in farthest]
    return {**base, **verdict}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "drift.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"drift: {result['status']} on {result.get('sample_size', 0)} captured images", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
