"""How alike two images are, from their 64×64 grey thumbnails: the second, strict test of the
duplicate check (``trainlib.duplicates`` proposes the pairs).

SSIM (7×7 windows) of 32×32 views, each standardised and tone-matched (brightness, contrast and
monotone tone changes cancel), tried as they are, mirrored, and with either a crop of up to 10% of
the other: a grid of crops ranked by correlation, the best refined to a fraction of a pixel. The
score is the ``LOCAL_QUANTILE`` of the windows, not their mean.
"""

from __future__ import annotations

from functools import cache

import numpy as np

THUMB = 32
SOURCE = 64  # the kept thumbnail: windows of it are averaged down to THUMB
TRIED = 3  # alignments scored by SSIM, per orientation
TONE_RATIO = 1.4  # brightness ±20%, and JPEG's shifts on top
_WINDOW = 7
LOCAL_QUANTILE = 0.1
ALIGNED = 0.9  # correlation below which no alignment is scored: every copy in the benchmark is above 0.93


def _box(x: np.ndarray) -> np.ndarray:
    """Mean over every 7×7 window of a stack of images (N, H, W), by an integral image."""
    c = np.pad(x, ((0, 0), (1, 0), (1, 0))).cumsum(1).cumsum(2)
    w = _WINDOW
    return (c[:, w:, w:] - c[:, :-w, w:] - c[:, w:, :-w] + c[:, :-w, :-w]) / (w * w)


def standard(x: np.ndarray) -> np.ndarray:
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
    return ssim(standard(a), standard(_tone_matched(b, a)))


def _resampler(start: np.ndarray, side: np.ndarray) -> np.ndarray:
    """Resampling matrices (K, THUMB, SOURCE) for windows [start, start + side) of the source: a tent
    two output pixels wide (antialiased bilinear, as Pillow reduces), so that the fine texture a
    resized copy lost and the original kept is filtered out of both alike."""
    step = side[:, None, None] / THUMB
    centres = start[:, None, None] + (np.arange(THUMB)[None, :, None] + 0.5) * step
    weights = np.clip(1 - np.abs(np.arange(SOURCE)[None, None, :] + 0.5 - centres) / step, 0, None)
    return (weights / weights.sum(axis=2, keepdims=True)).astype(np.float32)


_GRID = np.array(
    [
        (s, x, y)
        for s in (1.0, 0.975, 0.95, 0.925, 0.9)
        for x in (0, 0.25, 0.5, 0.75, 1)
        for y in (0, 0.25, 0.5, 0.75, 1)
        if s < 1.0 or (x, y) == (0.5, 0.5)
    ],
    dtype=np.float64,
)  # the whole image first: _GRID[0]
_SIDE = SOURCE * _GRID[:, 0]
_ROWS = _resampler((SOURCE - _SIDE) * _GRID[:, 2], _SIDE)
_COLS = _resampler((SOURCE - _SIDE) * _GRID[:, 1], _SIDE).transpose(0, 2, 1).copy()


def windows(source: np.ndarray) -> np.ndarray:
    """Every window of the crop grid of a SOURCE×SOURCE thumbnail (up to 10% cut, corners on a 5×5
    grid of the slack), each averaged down to THUMB×THUMB: two matrix products."""
    rows = (_ROWS.reshape(-1, SOURCE) @ source).reshape(len(_GRID), THUMB, SOURCE)
    return rows @ _COLS


def unit(x: np.ndarray) -> np.ndarray:
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
        self.unit_cuts, self.unit_flipped_cuts = unit(self.cuts), unit(self.flipped_cuts)
        self.tones = (float(self.source.mean()), float(self.source.std()))


@cache
def _refining(best: int) -> tuple[np.ndarray, np.ndarray]:
    """The resamplers of the windows around grid alignment ``best`` at half the grid's steps (made once each)."""
    scale, x, y = _GRID[best]
    grid = np.array(
        [
            (min(1.0, scale + ds), min(1.0, max(0.0, x + dx)), min(1.0, max(0.0, y + dy)))
            for ds in (-0.0125, 0, 0.0125)
            for dx in (-0.125, 0, 0.125)
            for dy in (-0.125, 0, 0.125)
        ]
    )
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
    for source, cuts, units, target in (
        (x.source, x.cuts, x.unit_cuts, y.whole),
        (x.source, x.cuts, x.unit_cuts, y.flipped),
        (y.source, y.cuts, y.unit_cuts, x.whole),
        (y.flipped_source, y.flipped_cuts, y.unit_flipped_cuts, x.whole),
    ):
        goal = unit(target[None])[0]
        fit = units @ goal
        best = int(fit.argmax())
        if best:  # a crop: refine it
            fine = _refined(source, best)
            cuts, fit = np.concatenate([cuts, fine]), np.concatenate([fit, unit(fine) @ goal])
        for i in np.argsort(-fit)[:TRIED]:
            if fit[i] >= ALIGNED:
                left.append(cuts[i])
                right.append(target)
    return float(_score(np.stack(right), np.stack(left)).max()) if left else 0.0
