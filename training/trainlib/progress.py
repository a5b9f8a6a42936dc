"""Progress within a long epoch, as lines in the job's log."""

from __future__ import annotations

import time


class ProgressLine:
    """``progress: epoch 2/5, 640/1260 images, 512.3 images/s`` at most every ``every`` seconds of an
    epoch (never for one shorter than that): what ``droptrain up`` draws its bars from, and a sign of
    life in a long epoch's log. No metric definition matches it."""

    def __init__(self, epoch: int, epochs: int, images: int, every: float = 2.0, clock=time.monotonic, say=print):
        self.epoch, self.epochs, self.images, self.every, self.clock, self.say = (
            epoch,
            epochs,
            images,
            every,
            clock,
            say,
        )
        self.started = self.last = clock()
        self.seen = 0

    def step(self, images: int) -> None:
        self.seen += images
        now = self.clock()
        if now - self.last >= self.every and self.seen < self.images:
            self.last = now
            rate = self.seen / max(now - self.started, 1e-9)
            self.say(
                f"progress: epoch {self.epoch}/{self.epochs}, {self.seen}/{self.images} images, {rate:.1f} images/s",
                flush=True,
            )
