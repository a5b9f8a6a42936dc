"""The adapters' error hierarchy, and the one place that reads botocore's ClientError."""

from __future__ import annotations

from botocore.exceptions import BotoCoreError, ClientError

_THROTTLING = {
    "Throttling",
    "ThrottlingException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "ProvisionedThroughputExceededException",
    "SlowDown",
    "ServiceUnavailable",
}


class AdapterError(Exception):
    """An AWS call failed. ``retryable`` says whether trying again later may succeed."""

    retryable = False

    def __init__(self, message: str, code: str = ""):
        super().__init__(message)
        self.code = code


class AlreadyExistsError(AdapterError):
    pass


class NotFoundError(AdapterError):
    pass


class ThrottledError(AdapterError):
    retryable = True


class ServiceError(AdapterError):
    """Anything else; retryable when AWS answered 5xx or the connection failed."""

    def __init__(self, message: str, code: str = "", retryable: bool = False):
        super().__init__(message, code)
        self.retryable = retryable


def translate(exc: ClientError | BotoCoreError, action: str) -> AdapterError:
    if isinstance(exc, BotoCoreError):
        return ServiceError(f"{action} failed: {exc}", retryable=True)
    error = exc.response.get("Error", {})
    code = error.get("Code", "")
    message = error.get("Message", "")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    text = f"{action} failed: {code}: {message}"
    lowered = message.lower()
    if code in _THROTTLING or status == 429:
        return ThrottledError(text, code)
    if code == "ResourceInUse" or "already exist" in lowered:
        return AlreadyExistsError(text, code)
    # SageMaker says "Could not find endpoint …" and "ModelPackage … does not exist." (ValidationException).
    if (
        code in ("ResourceNotFound", "NoSuchKey", "NoSuchBucket", "NotFound", "404")
        or "could not find" in lowered
        or "does not exist" in lowered
    ):
        return NotFoundError(text, code)
    return ServiceError(text, code, retryable=status >= 500)
