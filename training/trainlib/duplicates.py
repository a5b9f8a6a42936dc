"""Duplicate images in two steps, as imagededup's and fastdup's checks work: a cheap hash proposes
candidate pairs, and a pair is a duplicate only when a stricter comparison of the two images agrees.

* **Exact** copies need no second test: the same bytes (SHA-256), or the same decoded pixels.
* **Proposal**: a 64-bit difference hash (dHash) of the image and of its mirror image. Hashes are
  bucketed on eight 8-bit bands; an image is compared only with the *leaders* it shares a band with
  (the first image of each group of duplicates found so far) within ``NEAR_BITS``, the
  ``MAX_PROPOSED`` nearest in 16×16 grey levels. Near-identical images collapse into one group, so
  5,000 of them cost a few comparisons each, not 12.5 million pairs; no list of all pairs is built.
* **Low detail**: an image whose grey thumbnail varies by less than ``MIN_DETAIL`` grey levels has a
  hash made of noise; it proposes nothing (only its exact copies are found).
* **Verification**: SSIM (7×7 windows) of the two 32×32 grey thumbnails, each standardised and
  tone-matched (brightness, contrast and monotone tone changes cancel), tried as they are, mirrored,
  and with either a crop of up to 10% of the other (a grid of crops ranked by correlation, refined
  to a fraction of a pixel). The score is the 10th percentile of the windows, not their mean: a
  copy's differences are spread thin, a lookalike differs somewhere. A pair is a duplicate at
  ``SIMILARITY``; with a *plain* image (one that barely changes when shifted) only at ``SURE``.
  The thresholds and how they were measured: docs/architecture.md ("The audit").
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from trainlib.similarity import SOURCE, THUMB, Views, similarity, ssim, standard, unit, windows

HASH_SIDE = 8
NEAR_BITS = 16
MIN_DETAIL = 3.0
SIMILARITY = 0.92
SURE = 0.98
PLAIN = 0.85
MAX_PROPOSED = 8


@dataclass
class Signature:
    pixels: str  # digest of the decoded pixels: the same picture in another file
    thumb: bytes  # SOURCE×SOURCE grey, row-major
    dhash: int
    mirror: int  # the dHash of the mirror image: a flipped copy proposes itself through it
    detail: float  # standard deviation of the thumbnail's grey levels
    plainness: float  # how little the image changes when shifted (1: a plain stroke or edge, any shift alike)


def _dhash(grey: np.ndarray) -> int:
    small = np.asarray(
        Image.fromarray(grey).resize((HASH_SIDE + 1, HASH_SIDE), Image.Resampling.BILINEAR), dtype=np.int16
    )
    bits = (small[:, :-1] > small[:, 1:]).ravel()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def signature(image: Image.Image) -> Signature:
    """What the duplicate check keeps of one decoded image: a little over 4 KiB."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit and float scans: their top 8 bits
        image = image.point(lambda v: v * (1 / 256)).convert("L")
    rgb = image.convert("RGB")
    pixels = hashlib.sha256(f"{image.size}".encode() + rgb.tobytes()).hexdigest()
    grey = rgb.convert("L")
    reduce = Image.Resampling.BOX if min(grey.size) >= SOURCE else Image.Resampling.BILINEAR
    thumb = np.asarray(grey.resize((SOURCE, SOURCE), reduce), dtype=np.uint8)
    return Signature(
        pixels,
        thumb.tobytes(),
        _dhash(thumb),
        _dhash(np.ascontiguousarray(thumb[:, ::-1])),
        float(thumb.std()),
        _plainness(thumb),
    )


def _plainness(thumb: np.ndarray) -> float:
    """The SSIM of the image with itself shifted by 1/16 of its side, along the axis it changes least:
    a single stroke (a scanned "1"), an edge or a gradient barely changes, and distinct scans of
    such a shape are as alike as copies; a photo or a word changes at once."""
    whole = windows(thumb.astype(np.float32))[0]
    shift = THUMB // 16
    pairs = ((whole[shift:, :], whole[:-shift, :]), (whole[:, shift:], whole[:, :-shift]))
    return max(float(ssim(standard(a[None]), standard(b[None]))[0]) for a, b in pairs)


def thumbnail(sig: Signature) -> np.ndarray:
    return np.frombuffer(sig.thumb, dtype=np.uint8).reshape(SOURCE, SOURCE)


@dataclass
class Pair:
    a: int
    b: int
    kind: str  # "exact" (the same bytes or pixels) or "near" (verified)
    score: float
    bits: int | None  # hash distance (0 for exact copies; None: compared directly, not proposed)


def _bands(value: int) -> list[tuple[int, int]]:
    return [(band, (value >> (8 * band)) & 0xFF) for band in range(8)]


def _exact(signatures: Sequence[Signature], digests: Sequence[str]) -> tuple[list[Pair], list[int]]:
    """Exact copies (bytes, then pixels) paired with the first of their group; the firsts go on."""
    pairs, first_of = [], {}
    for index, (digest, sig) in enumerate(zip(digests, signatures)):
        for key in (("bytes", digest), ("pixels", sig.pixels)):
            if key in first_of:
                pairs.append(Pair(first_of[key], index, "exact", 1.0, 0))
                break
        else:
            first_of[("bytes", digest)] = first_of[("pixels", sig.pixels)] = index
    copies = {p.b for p in pairs}
    return pairs, [i for i in range(len(signatures)) if i not in copies]


def _accepted(scores: list[float], plain: list[bool]) -> list[int]:
    """Which of an image's proposals are its duplicates: any at ``SURE``, and the best one at
    ``SIMILARITY`` unless the pair has a plain image (``PLAIN``): distinct scans of one stroke, an
    edge or a gradient are as alike as copies, so only a near-perfect match counts there."""
    best = max(range(len(scores)), key=scores.__getitem__, default=None)
    return [
        k for k, score in enumerate(scores) if score >= SURE or (k == best and not plain[k] and score >= SIMILARITY)
    ]


def find(signatures: Sequence[Signature], digests: Sequence[str]) -> tuple[list[Pair], dict[str, int]]:
    """Every duplicate pair (an exact copy with the first of its kind, a near one with the group
    leader it verified against) and what it cost: images compared, proposals verified."""
    pairs, distinct = _exact(signatures, digests)
    buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
    hashes = np.array([s.dhash for s in signatures], dtype=np.uint64)
    stats = {"low_detail": 0, "proposed": 0, "verified": 0}
    views = _ViewCache(signatures)
    coarse = _coarse(signatures)
    for index in distinct:
        sig = signatures[index]
        if sig.detail < MIN_DETAIL:
            stats["low_detail"] += 1
            continue
        leaders = sorted({m for key in _bands(sig.dhash) + _bands(sig.mirror) for m in buckets.get(key, ())})
        matched: list[int] = []
        if leaders:
            theirs = hashes[leaders]
            bits = np.minimum(
                np.bitwise_count(theirs ^ np.uint64(sig.dhash)), np.bitwise_count(theirs ^ np.uint64(sig.mirror))
            )
            near = np.flatnonzero(bits <= NEAR_BITS)
            # Among lookalikes (scans, text) many leaders are near in bits: the nearest in grey levels go first.
            fit = (
                np.maximum(
                    coarse[0][[leaders[i] for i in near]] @ coarse[0][index],
                    coarse[0][[leaders[i] for i in near]] @ coarse[1][index],
                )
                if len(near)
                else np.zeros(0)
            )
            order = [int(near[i]) for i in np.argsort(-fit, kind="stable")[:MAX_PROPOSED]]
            stats["proposed"] += len(order)
            mine = views.get(index)
            scores = [similarity(mine, views.get(leaders[i])) for i in order]
            accepted = _accepted(scores, [max(sig.plainness, signatures[leaders[i]].plainness) >= PLAIN for i in order])
            matched = [order[k] for k in accepted]
            pairs += [
                Pair(leaders[order[k]], index, "near", round(scores[k], 4), int(bits[order[k]])) for k in accepted
            ]
            stats["verified"] += len(matched)
        if not matched:
            for key in _bands(sig.dhash):
                buckets[key].append(index)
    return pairs, stats


def _coarse(signatures: Sequence[Signature], chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Every image at 16×16, standardised (and mirrored): 2 KiB an image, for ranking proposals; made
    a chunk at a time, never all thumbnails in floating point at once."""
    small = np.zeros((len(signatures), 16, 16), dtype=np.float32)
    for start in range(0, len(signatures), chunk):
        thumbs = np.stack([thumbnail(s) for s in signatures[start : start + chunk]]).astype(np.float32)
        small[start : start + len(thumbs)] = thumbs.reshape(len(thumbs), 16, SOURCE // 16, 16, SOURCE // 16).mean(
            axis=(2, 4)
        )
    return unit(small), unit(np.ascontiguousarray(small[:, :, ::-1]))


class _ViewCache:
    """The views of the images compared lately (about 1.6 MiB each, so never all of them)."""

    def __init__(self, signatures: Sequence[Signature], size: int = 256):
        self.signatures, self.size, self.kept = signatures, size, {}

    def get(self, index: int) -> Views:
        if index not in self.kept:
            if len(self.kept) >= self.size:
                self.kept.pop(next(iter(self.kept)))
            self.kept[index] = Views(thumbnail(self.signatures[index]))
        return self.kept[index]


def groups(count: int, pairs: Iterable[Pair]) -> list[int]:
    """The group of every image (union-find over the pairs): the index of its group's root."""
    parent = list(range(count))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for pair in pairs:
        ra, rb = root(pair.a), root(pair.b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return [root(i) for i in range(count)]
