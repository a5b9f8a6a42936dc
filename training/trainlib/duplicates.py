"""Duplicate images in two steps, as imagededup's and fastdup's checks work: a cheap hash proposes
candidate pairs, and a pair is a duplicate only when a stricter comparison of the two images agrees.

* **Exact** copies need no second test: the same bytes (SHA-256), or the same decoded pixels.
* **Proposal**: a 64-bit difference hash (dHash) of the image and of its mirror image. Hashes are
  bucketed on eight 8-bit bands; an image is compared only with the *leaders* it shares a band with
  (the first image of each group of duplicates found so far) within ``NEAR_BITS``, the
  ``MAX_PROPOSED`` nearest in 16×16 grey levels. Near-identical images collapse into one group, so 5,000 of them cost about
  5,000 comparisons, not 12.5 million pairs; no list of all pairs is ever built.
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
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

THUMB = 32
SOURCE = 64  # the kept thumbnail: windows of it are averaged down to THUMB
TRIED = 3  # alignments scored by SSIM, per orientation
HASH_SIDE = 8
NEAR_BITS = 16
MIN_DETAIL = 3.0
SIMILARITY = 0.92
SURE = 0.98
PLAIN = 0.85
TONE_RATIO = 1.4  # brightness ±20%, and JPEG's shifts on top
MAX_PROPOSED = 8
_WINDOW = 7
LOCAL_QUANTILE = 0.1
ALIGNED = 0.9  # correlation below which no alignment is scored: every copy in the benchmark is above 0.93


@dataclass
class Signature:
    pixels: str  # digest of the decoded pixels: the same picture in another file
    thumb: bytes  # SOURCE×SOURCE grey, row-major
    dhash: int
    mirror: int  # the dHash of the mirror image: a flipped copy proposes itself through it
    detail: float  # standard deviation of the thumbnail's grey levels
    plainness: float  # how little the image changes when shifted (1: a plain stroke or edge, any shift alike)


def _dhash(grey: np.ndarray) -> int:
    small = np.asarray(Image.fromarray(grey).resize((HASH_SIDE + 1, HASH_SIDE), Image.Resampling.BILINEAR), dtype=np.int16)
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
    return Signature(pixels, thumb.tobytes(), _dhash(thumb), _dhash(np.ascontiguousarray(thumb[:, ::-1])),
                     float(thumb.std()), _plainness(thumb))


def _plainness(thumb: np.ndarray) -> float:
    """The SSIM of the image with itself shifted by 1/16 of its side, along the axis it changes least:
    a single stroke (a scanned "1"), an edge or a gradient barely changes, and distinct scans of
    such a shape are as alike as copies; a photo or a word changes at once."""
    whole = windows(thumb.astype(np.float32))[0]
    shift = THUMB // 16
    pairs = ((whole[shift:, :], whole[:-shift, :]), (whole[:, shift:], whole[:, :-shift]))
    return max(float(ssim(_standard(a[None]), _standard(b[None]))[0]) for a, b in pairs)


def _box(x: np.ndarray) -> np.ndarray:
    """Mean over every 7×7 window of a stack of images (N, H, W), by an integral image."""
    c = np.pad(x, ((0, 0), (1, 0), (1, 0))).cumsum(1).cumsum(2)
    w = _WINDOW
    return (c[:, w:, w:] - c[:, :-w, w:] - c[:, w:, :-w] + c[:, :-w, :-w]) / (w * w)


def _standard(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=(1, 2), keepdims=True)
    return x / (x.std(axis=(1, 2), keepdims=True) + 1e-6)


def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM of pairs of standardised images (N, H, W), as Wang et al. define it, one value a pair: not
    the mean over the windows but their ``LOCAL_QUANTILE``. A copy's differences (JPEG, resampling)
    are spread thin everywhere; a lookalike differs somewhere (a stroke, a corner), and that shows."""
    c1, c2 = (0.01 * 8) ** 2, (0.03 * 8) ** 2  # the dynamic range of a standardised image is about 8
    ma, mb = _box(a), _box(b)
    va, vb, cov = _box(a * a) - ma * ma, _box(b * b) - mb * mb, _box(a * b) - ma * mb
    value = ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2))
    return np.quantile(value.reshape(len(value), -1), LOCAL_QUANTILE, axis=1)


def _tone_matched(b: np.ndarray, a: np.ndarray) -> np.ndarray:
    """``b`` with ``a``'s grey levels, rank for rank: a monotone tone change (brightness, gamma) cancels."""
    out = np.empty_like(b)
    ranks = np.argsort(b.reshape(len(b), -1), axis=1, kind="stable")
    levels = np.sort(a.reshape(len(a), -1), axis=1)
    np.put_along_axis(out.reshape(len(b), -1), ranks, levels, axis=1)
    return out


def _score(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return ssim(_standard(a), _standard(_tone_matched(b, a)))


def _resampler(start: np.ndarray, side: np.ndarray) -> np.ndarray:
    """Resampling matrices (K, THUMB, SOURCE) for windows [start, start + side) of the source: a tent
    two output pixels wide (antialiased bilinear, as Pillow reduces), so that the fine texture a
    resized copy lost and the original kept is filtered out of both alike."""
    step = side[:, None, None] / THUMB
    centres = start[:, None, None] + (np.arange(THUMB)[None, :, None] + 0.5) * step
    weights = np.clip(1 - np.abs(np.arange(SOURCE)[None, None, :] + 0.5 - centres) / step, 0, None)
    return (weights / weights.sum(axis=2, keepdims=True)).astype(np.float32)


_GRID = np.array([(s, x, y) for s in (1.0, 0.975, 0.95, 0.925, 0.9) for x in (0, .25, .5, .75, 1) for y in (0, .25, .5, .75, 1)
                  if s < 1.0 or (x, y) == (0.5, 0.5)], dtype=np.float64)  # the whole image first: _GRID[0]
_SIDE = SOURCE * _GRID[:, 0]
_ROWS = _resampler((SOURCE - _SIDE) * _GRID[:, 2], _SIDE)
_COLS = _resampler((SOURCE - _SIDE) * _GRID[:, 1], _SIDE).transpose(0, 2, 1).copy()


def windows(source: np.ndarray) -> np.ndarray:
    """Every window of the crop grid of a SOURCE×SOURCE thumbnail (up to 10% cut, corners on a 5×5
    grid of the slack), each averaged down to THUMB×THUMB: two matrix products."""
    rows = (_ROWS.reshape(-1, SOURCE) @ source).reshape(len(_GRID), THUMB, SOURCE)
    return rows @ _COLS


def _unit(x: np.ndarray) -> np.ndarray:
    flat = x.reshape(len(x), -1) if len(x) else x.reshape(0, 1)
    flat = flat - flat.mean(axis=1, keepdims=True)
    return flat / (np.linalg.norm(flat, axis=1, keepdims=True) + 1e-6)


class Views:
    """An image's thumbnail as the comparisons need it: whole, mirrored, and cut every way of the grid."""

    def __init__(self, thumb: np.ndarray):
        self.source = thumb.astype(np.float32)
        self.flipped_source = np.ascontiguousarray(self.source[:, ::-1])
        self.cuts, self.flipped_cuts = windows(self.source), windows(self.flipped_source)
        self.whole, self.flipped = self.cuts[0], self.flipped_cuts[0]
        self.unit_cuts, self.unit_flipped_cuts = _unit(self.cuts), _unit(self.flipped_cuts)
        self.tones = (float(self.source.mean()), float(self.source.std()))


@lru_cache(maxsize=None)
def _refining(best: int) -> tuple[np.ndarray, np.ndarray]:
    """The resamplers of the windows around grid alignment ``best`` at half the grid's steps (made once each)."""
    scale, x, y = _GRID[best]
    grid = np.array([(min(1.0, scale + ds), min(1.0, max(0.0, x + dx)), min(1.0, max(0.0, y + dy)))
                     for ds in (-0.0125, 0, 0.0125) for dx in (-0.125, 0, 0.125) for dy in (-0.125, 0, 0.125)])
    side = SOURCE * grid[:, 0]
    rows = _resampler((SOURCE - side) * grid[:, 2], side)
    return rows.reshape(-1, SOURCE), _resampler((SOURCE - side) * grid[:, 1], side).transpose(0, 2, 1).copy()


def _refined(source: np.ndarray, best: int) -> np.ndarray:
    """Windows around one alignment of the grid: the best fit to a fraction of a pixel."""
    rows, cols = _refining(best)
    return (rows @ source).reshape(len(cols), THUMB, SOURCE) @ cols


def _same_tones(x: Views, y: Views) -> bool:
    """Could one be the other with its brightness changed by ±20%? Standardising and tone matching
    forgive any tone change; a grey-on-black edge is not a copy of a white-on-black one."""
    (ma, sa), (mb, sb) = x.tones, y.tones
    return max(ma, mb) <= TONE_RATIO * min(ma, mb) + 8 and max(sa, sb) <= TONE_RATIO * min(sa, sb) + 4


def similarity(x: Views, y: Views) -> float:
    """How alike two images are (1: the same picture): the best SSIM of one against the other as it
    is, mirrored, or cut by up to 10% (either may be the crop). Correlation over the crop grid finds
    the best alignment of each kind, refined to half the grid's steps; SSIM scores the ``TRIED`` best."""
    if not _same_tones(x, y):
        return 0.0
    left, right = [], []
    for source, cuts, unit, target in ((x.source, x.cuts, x.unit_cuts, y.whole), (x.source, x.cuts, x.unit_cuts, y.flipped),
                                       (y.source, y.cuts, y.unit_cuts, x.whole),
                                       (y.flipped_source, y.flipped_cuts, y.unit_flipped_cuts, x.whole)):
        goal = _unit(target[None])[0]
        fit = unit @ goal
        best = int(fit.argmax())
        if best:  # a crop: refine it
            fine = _refined(source, best)
            cuts, fit = np.concatenate([cuts, fine]), np.concatenate([fit, _unit(fine) @ goal])
        for i in np.argsort(-fit)[:TRIED]:
            if fit[i] >= ALIGNED:
                left.append(cuts[i])
                right.append(target)
    return float(_score(np.stack(right), np.stack(left)).max()) if left else 0.0


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
    return [k for k, score in enumerate(scores)
            if score >= SURE or (k == best and not plain[k] and score >= SIMILARITY)]


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
            bits = np.minimum(np.bitwise_count(theirs ^ np.uint64(sig.dhash)), np.bitwise_count(theirs ^ np.uint64(sig.mirror)))
            near = np.flatnonzero(bits <= NEAR_BITS)
            # Among lookalikes (scans, text) many leaders are near in bits: the nearest in grey levels go first.
            fit = np.maximum(coarse[0][[leaders[i] for i in near]] @ coarse[0][index],
                             coarse[0][[leaders[i] for i in near]] @ coarse[1][index]) if len(near) else np.zeros(0)
            order = [int(near[i]) for i in np.argsort(-fit, kind="stable")[:MAX_PROPOSED]]
            stats["proposed"] += len(order)
            mine = views.get(index)
            scores = [similarity(mine, views.get(leaders[i])) for i in order]
            accepted = _accepted(scores, [max(sig.plainness, signatures[leaders[i]].plainness) >= PLAIN for i in order])
            matched = [order[k] for k in accepted]
            pairs += [Pair(leaders[order[k]], index, "near", round(scores[k], 4), int(bits[order[k]])) for k in accepted]
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
        thumbs = np.stack([thumbnail(s) for s in signatures[start:start + chunk]]).astype(np.float32)
        small[start:start + len(thumbs)] = thumbs.reshape(len(thumbs), 16, SOURCE // 16, 16, SOURCE // 16).mean(axis=(2, 4))
    return _unit(small), _unit(np.ascontiguousarray(small[:, :, ::-1]))


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
