"""The training side's error hierarchy.

Everything a user can cause (a bad dataset, a diverging learning rate, weights that cannot be
fetched) is a ``TrainingError``: ``train.py`` prints its message as one line, writes it where
SageMaker reads a job's ``FailureReason``, and exits non-zero. Anything else is a bug and keeps
its traceback.
"""

import os
from pathlib import Path


class TrainingError(Exception):
    """A failure the user can act on; the message says how."""


class DatasetError(TrainingError):
    """The dataset is unusable (layout, classes, empty splits)."""


class ArchiveError(DatasetError):
    """The dataset archive is unsafe or unreadable."""


class WeightsUnavailableError(TrainingError):
    """Pretrained weights are neither cached nor downloadable."""


class DivergedError(TrainingError):
    """The loss became NaN or infinite."""


def write_failure(message: str) -> None:
    """SageMaker shows the content of ``$SM_OUTPUT_DIR/failure`` as the job's FailureReason."""
    output_dir = os.environ.get("SM_OUTPUT_DIR")
    if output_dir:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "failure").write_text(message[:1024])
