"""The training side's error hierarchy.

Everything a user can cause (a bad dataset, a diverging learning rate, weights that cannot be
fetched) is a ``TrainingError``: ``train.py`` prints its message as one line, writes it where
SageMaker reads a job's ``FailureReason``, and exits non-zero. Anything else is a bug and keeps
its traceback.
"""


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
