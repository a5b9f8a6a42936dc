"""The audit of a dataset too large for one instance: each instance scans its shard, one job merges.

SageMaker Processing gives each of a job's instances a share of the dataset's objects
(``ShardedByS3Key``). Duplicates cross shards, so no instance can judge them alone: each writes what the
duplicate search needs of every image it decoded (its path, split, class, content digest, size, colour
mode and duplicate signature: a little over 4 KiB an image) and what it could not read, in a file named
by a digest of its own paths. The merge job reads every shard's file and runs the very same findings
over the union as a one-instance audit runs over its scan, so a copy whose two files landed on two
instances is found as if one instance had read both.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from trainlib.audit import Audit, Sample
from trainlib.duplicates import Signature

SUFFIX = ".audit-shard.json.gz"


def _sample(sample: Sample) -> dict[str, Any]:
    out = asdict(sample)
    if sample.signature is not None:
        out["signature"] = {**asdict(sample.signature), "thumb": base64.b64encode(sample.signature.thumb).decode()}
    return out


def _from(entry: dict[str, Any]) -> Sample:
    signature = entry.pop("signature", None)
    if signature is not None:
        signature = Signature(**{**signature, "thumb": base64.b64decode(signature["thumb"])})
    return Sample(**{**entry, "size": tuple(entry["size"]), "signature": signature})


def write(audit: Audit, out_dir: Path) -> Path:
    """This instance's shard as one file in ``out_dir`` (named by its paths: every shard's is its own)."""
    paths = sorted([s.path for s in audit.samples] + [u["path"] for u in audit.unreadable])
    name = hashlib.sha256("\n".join(paths).encode()).hexdigest()[:16] + SUFFIX
    record = {
        "layout": audit.layout,
        "hidden_folders": audit.hidden_folders,
        "unreadable": audit.unreadable,
        "samples": [_sample(s) for s in audit.samples],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / name
    target.write_bytes(gzip.compress(json.dumps(record).encode(), compresslevel=5))
    return target


def read(folder: Path) -> Audit:
    """Every shard under ``folder`` as one scan, ordered as one instance's scan would be."""
    files = sorted(folder.rglob(f"*{SUFFIX}"))
    if not files:
        raise FileNotFoundError(f"no audit shards ({SUFFIX}) under {folder}")
    merged = Audit()
    hidden: set[str] = set()
    for path in files:
        record = json.loads(gzip.decompress(path.read_bytes()))
        merged.samples += [_from(entry) for entry in record["samples"]]
        merged.unreadable += record["unreadable"]
        hidden.update(record["hidden_folders"])
        if record["layout"] == "splits":  # a shard holding no train/ image cannot tell; any that does, can
            merged.layout = "splits"
    merged.samples.sort(key=lambda s: (s.split, s.label, s.path))
    merged.unreadable.sort(key=lambda u: u["path"])
    merged.hidden_folders = sorted(hidden)
    return merged
