"""The review queue (docs/operations.md, "Review and retrain"): the doubtful answers a person labels.

The predict handler keeps every doubtful answer with its image (``chalice_app.capture.keep_doubtful``).
``GET /projects/{project}/review`` lists those not yet decided, newest first; ``POST .../review/{id}``
labels one (a class the project knows, or a new one) or discards it. A labelled image is copied under
``runs/review/<project>/labelled/<split>/<class>/`` — never into ``datasets/``, which stays the user's —
and the next retrain trains on it. Of each class's labelled images the 2nd, 5th, 8th… are held out
(``test``): the gate judges the retrained version on them too, and a class's first image always trains.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any

from chalice_app import capture, names
from chalice_app.adapters.errors import NotFoundError
from chalice_app.pipeline.services import Services, read_json
from chalice_app.pipeline.versions import VersionError, evaluation_key, project_versions

PAGE = 50  # items GET answers: a person reviews a few at a time
HELD_OUT_EVERY = 3
_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# A class is a folder name: what a dataset's own classes can be, without path tricks.
_CLASS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.+-]{0,63}$")
FIELDS = {"label", "new_class", "discard"}


class ReviewError(VersionError):
    """A decision the queue cannot take; ``code`` says which."""


class UnknownItemError(VersionError):
    status, code = 404, "unknown_item"


class AlreadyReviewedError(VersionError):
    status, code = 409, "already_reviewed"


def known_classes(svc: Services, project: str) -> list[str]:
    """The classes a label may name: the serving version's (else the newest's), and those labelled new."""
    versions = project_versions(svc, project)  # UnknownProjectError: 404
    version = next((v for v in versions if v["serving"]), versions[-1])
    return sorted(set(classes_of(svc, version["run_id"])) | set(labelled_counts(svc, project)))


def classes_of(svc: Services, run: str) -> list[str]:
    """A version's classes, as its evaluation names them (none when it has no evaluation)."""
    evaluation = read_json(svc, evaluation_key(run))
    return list(evaluation.get("classes") or []) if isinstance(evaluation, dict) else []


def labelled_counts(svc: Services, project: str) -> dict[str, dict[str, int]]:
    """``{class: {split: images}}`` of the project's labelled images."""
    counts: dict[str, dict[str, int]] = {}
    prefix = capture.review_prefix(project, "labelled/")
    for key, _ in svc.s3.list_objects(svc.config.data_bucket, prefix):
        parts = key[len(prefix) :].split("/")
        if len(parts) == 3 and parts[0] in ("train", "test"):  # <split>/<class>/<image>; anything else is not ours
            split, name = parts[0], parts[1]
            counts.setdefault(name, {}).setdefault(split, 0)
            counts[name][split] += 1
    return counts


def _decided(svc: Services, project: str) -> set[str]:
    prefix = capture.review_prefix(project, "decided/")
    return {key[len(prefix) :].removesuffix(".json") for key, _ in svc.s3.list_objects(svc.config.data_bucket, prefix)}


def _pending_keys(svc: Services, project: str) -> list[str]:
    """The items' keys, oldest first (their names start with the time)."""
    prefix = capture.review_prefix(project, "pending/")
    return [key for key, _ in svc.s3.list_objects(svc.config.data_bucket, prefix) if key.endswith(".json")]


def image_path(project: str, item_id: str) -> str:
    """The item's image route, relative to the API's base URL (as a run's ``report``): the image comes from
    the API itself, so the console's page reaches nothing else, with the API key where the stage needs one."""
    return f"projects/{project}/review/{item_id}/image"


def queue(svc: Services, project: str) -> dict[str, Any]:
    """``GET /projects/{project}/review``: the undecided items, newest first, and the classes to label with."""
    slug = names.project_of(project)
    classes = known_classes(svc, slug)
    decided = _decided(svc, slug)
    items: list[dict[str, Any]] = []
    for key in reversed(_pending_keys(svc, slug)):
        if len(items) == PAGE:
            break
        item = read_json(svc, key)
        if not isinstance(item, dict) or item.get("id") in decided:
            continue
        shown = {k: item.get(k) for k in ("id", "predictions", "captured_at", "abstained", "model")}
        items.append({**shown, "image_url": image_path(slug, item["id"])})
    return {"project": slug, "classes": classes, "items": items}


def find_item(svc: Services, project: str, item_id: str) -> dict[str, Any]:
    if not _ID.match(item_id):
        raise UnknownItemError(f"there is no review item {item_id[:80]!r}")
    key = next((k for k in _pending_keys(svc, project) if k.endswith(f"-{item_id}.json")), None)
    item = read_json(svc, key) if key else None
    if not isinstance(item, dict):
        raise UnknownItemError(f"project {project} has no review item {item_id!r}")
    return item


def image(svc: Services, project: str, item_id: str) -> bytes:
    """The item's image, as the endpoint received it (a JPEG or PNG: the predict route takes no other)."""
    slug = names.project_of(project)
    return svc.s3.get(svc.config.data_bucket, find_item(svc, slug, item_id)["image"])


def _decision(request: Any, classes: list[str]) -> dict[str, Any]:
    """The request checked: ``{"discard": True}`` or ``{"label", "new_class"}``."""
    if not isinstance(request, dict) or set(request) - FIELDS:
        unknown = sorted(set(request) - FIELDS) if isinstance(request, dict) else []
        raise ReviewError(f'send {{"label": "<class>"}} or {{"discard": true}}; unknown fields: {unknown}')
    if request.get("discard") is True and set(request) == {"discard"}:
        return {"discard": True}
    label, new = request.get("label"), request.get("new_class", False)
    if not isinstance(label, str) or not isinstance(new, bool) or "discard" in request:
        raise ReviewError(
            'send either {"label": "<class>"} (with "new_class": true for a new one) or {"discard": true}'
        )
    if new:
        if label in classes:
            raise ReviewError(f"{label!r} is a class already: label it without new_class", "class_exists")
        if not _CLASS.match(label):
            raise ReviewError(
                f"{label[:80]!r} cannot be a class name: letters, digits, space, _ . + -, "
                "starting with a letter or digit, at most 64 characters",
                "invalid_class",
            )
    elif label not in classes:
        raise ReviewError(
            f"{label[:80]!r} is not one of the project's classes ({', '.join(classes)}); "
            'send "new_class": true to add it',
            "unknown_class",
        )
    return {"label": label, "new_class": new}


def decide(svc: Services, project: str, item_id: str, request: Any) -> dict[str, Any]:
    """``POST /projects/{project}/review/{id}``: the item labelled (its image copied where retrain reads
    it) or discarded, once."""
    slug = names.project_of(project)
    classes = known_classes(svc, slug)
    decision = _decision(request, classes)
    item = find_item(svc, slug, item_id)
    if item_id in _decided(svc, slug):
        raise AlreadyReviewedError(f"review item {item_id} was decided already")
    bucket, copied = svc.config.data_bucket, None
    answer: dict[str, Any] = {"project": slug, "id": item_id, **decision}
    if "label" in decision:
        label = decision["label"]
        done = sum(labelled_counts(svc, slug).get(label, {}).values())
        split = "test" if (done + 1) % HELD_OUT_EVERY == 2 else "train"
        suffix = item["image"].rsplit(".", 1)[-1]
        copied = capture.review_prefix(slug, f"labelled/{split}/{label}/{item_id}.{suffix}")
        svc.s3.put_if_absent(bucket, copied, svc.s3.get(bucket, item["image"]))
        answer.update(split=split, image=f"s3://{bucket}/{copied}")
    decided_at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    record = {**answer, "decided_at": decided_at, "captured_at": item.get("captured_at")}
    if not svc.s3.put_if_absent(
        bucket, capture.review_prefix(slug, f"decided/{item_id}.json"), json.dumps(record).encode()
    ):
        if copied:  # another decision won meanwhile: its label stands, not this one's copy
            _forget(svc, slug, item_id, copied)
        raise AlreadyReviewedError(f"review item {item_id} was decided already")
    return {**answer, "decided_at": decided_at}


def _forget(svc: Services, project: str, item_id: str, copied: str) -> None:
    winner = read_json(svc, capture.review_prefix(project, f"decided/{item_id}.json")) or {}
    if winner.get("image") == f"s3://{svc.config.data_bucket}/{copied}":
        return  # the same label in the same place: the copy is the winner's too
    try:
        svc.s3.delete(svc.config.data_bucket, copied)
    except NotFoundError:
        pass
