"""training/drift_check.py, the drift check's job, on a trained job's archive and capture files written as
SageMaker writes them: fresh images of the training distribution are not drift, the same inverted are."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from PIL import Image, ImageOps

from chalice_app import capture
from droptrain.synthetic import make_dataset
from helpers import TINY

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "training"))
import drift_check  # noqa: E402

START = datetime(2026, 12, 6, 15, 0, tzinfo=timezone.utc)


def _captures(folder: Path, images: list[Path], invert: bool, offset: int = 0) -> None:
    for index, path in enumerate(images):
        with Image.open(path) as image:
            shown = ImageOps.invert(image.convert("RGB")) if invert else image.convert("RGB")
            shown.save(folder / "tmp.jpg", quality=95)
        when = START + timedelta(minutes=offset + index)
        line = capture.record(
            (folder / "tmp.jpg").read_bytes(), "image/jpeg", b'{"predictions": []}', when, f"e{index}"
        )
        target = folder / capture.key("c", "droptrain-local-pets", "AllTraffic", when, f"e{index}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(capture.json_line(line))
    (folder / "tmp.jpg").unlink()


def _verdict(trained_job, captures: Path, out: Path, since: str = "") -> dict:
    argv = ["--model", str(trained_job["archive"].parent), "--captures", str(captures), "--out", str(out)]
    assert drift_check.main([*argv, "--since", since]) == 0
    return json.loads((out / "drift.json").read_text())


def test_fresh_images_are_not_drift_and_inverted_ones_are(trained_job, tmp_path):
    make_dataset(tmp_path / "fresh", **{**TINY, "per_class": 20, "seed": 11})
    images = sorted((tmp_path / "fresh").rglob("*.jpg"))
    same, inverted = tmp_path / "same", tmp_path / "inverted"
    for folder in (same, inverted):
        folder.mkdir()
    _captures(same, images, invert=False)
    _captures(inverted, images, invert=True)
    fresh = _verdict(trained_job, same, tmp_path / "out-same")
    assert fresh["status"] == "no_drift" and fresh["sample_size"] == len(images), fresh
    assert (
        fresh["model"] == "pets-1a2b3c4d"
        and fresh["until"] == f"{START + timedelta(minutes=len(images) - 1):%Y-%m-%dT%H:%M:%SZ}"
    )
    shifted = _verdict(trained_job, inverted, tmp_path / "out-inverted")
    assert shifted["status"] == "drift" and shifted["p_value"] < shifted["alpha"], shifted
    assert len(shifted["examples"]) == drift_check.EXAMPLES and shifted["examples"][0]["file"].endswith(".jsonl")


def test_only_captures_after_the_last_check_count_and_too_few_say_so(trained_job, tmp_path):
    make_dataset(tmp_path / "fresh", **{**TINY, "per_class": 20, "seed": 12})
    images = sorted((tmp_path / "fresh").rglob("*.jpg"))
    folder = tmp_path / "captures"
    folder.mkdir()
    _captures(folder, images, invert=False)
    (folder / "broken.jsonl").write_text(
        "not json\n" + capture.json_line(capture.record(b"junk", "image/jpeg", b"{}", START + timedelta(days=1), "bad"))
    )
    since = f"{START + timedelta(minutes=len(images) - 10):%Y-%m-%dT%H:%M:%SZ}"
    verdict = _verdict(trained_job, folder, tmp_path / "out", since)
    assert verdict["status"] == "not_enough_data" and verdict["sample_size"] == 9 and verdict["undecodable"] == 1
    # The job reads the fields the API's reader reads, from the same lines.
    for item in drift_check.captured_images(folder, ""):
        line = (folder / item["file"]).read_text().splitlines()[-1]
        assert capture.parse(line).body == item["body"]
