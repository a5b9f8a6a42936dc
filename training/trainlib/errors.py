"""The error hierarchies of training and of the serving edge.

Everything a user can cause (a bad dataset, a diverging learning rate, weights that cannot be
fetched) is a ``TrainingError``: ``train.py`` prints its message as one line, writes it where
SageMaker reads a job's ``FailureReason``, and exits non-zero. Anything else is a bug and keeps
its traceback. What a prediction request can get wrong is a ``PredictionError``, with its HTTP status.
"""

import os
from pathlib import Path
from typing import Any

# SageMaker's real-time InvokeEndpoint takes payloads up to 6 MB.
MAX_BODY_BYTES = 6 * 1024 * 1024


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


# The header SageMaker passes an InvokeEndpoint's CustomAttributes in; droptrain's API sends its request
# options there, as a query string (``explain=true&min_confidence=0.8``).
OPTIONS_HEADER = "x-amzn-sagemaker-custom-attributes"
# What a Batch Transform job accepts (its TransformOutput.Accept, sent with every record): each image's
# answer as one line of the job's JSON Lines output, errors included (chalice_app/pipeline/batch.py).
BATCH_ACCEPT = "application/jsonlines"


def as_batch_line(answer: dict[str, Any]) -> dict[str, Any]:
    """An answer (predictions, or the error body) as a batch output line: both keys always there."""
    return {
        "predictions": answer.get("predictions", []),
        "abstained": answer.get("abstained"),
        "error": answer.get("error"),
    }


class PredictionError(Exception):
    """What a request to the endpoint gets instead of predictions: its HTTP status and the API's error body.
    Here, with no torch import, so that the serving module can name them before it loads a model."""

    status = 500
    code = "internal_error"

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": str(self)}}


class InvalidImageError(PredictionError):
    status, code = 400, "invalid_image"


class ImageTooLargeError(PredictionError):
    status, code = 400, "image_too_large"


class PayloadTooLargeError(PredictionError):
    status, code = 413, "payload_too_large"


class InvalidOptionError(PredictionError):
    """A request option (``explain``, ``min_confidence``) out of its range; ``code`` names which."""

    status = 400

    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.code = code
