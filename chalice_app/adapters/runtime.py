"""sagemaker-runtime: InvokeEndpoint, with its failures told apart."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from chalice_app.adapters.errors import AdapterError, ThrottledError, translate


class EndpointNotFoundError(AdapterError):
    pass


class EndpointNotReadyError(AdapterError):
    retryable = True


class ModelError(AdapterError):
    """The model container answered an error; ``status`` is what it answered."""

    def __init__(self, message: str, status: int):
        super().__init__(message, "ModelError")
        self.status = status


class RuntimeAdapter:
    def __init__(self, client: Any):
        self._client = client

    def invoke(self, endpoint: str, body: bytes, content_type: str, accept: str, attributes: str = "") -> bytes:
        request = {"EndpointName": endpoint, "Body": body, "ContentType": content_type, "Accept": accept}
        if attributes:
            request["CustomAttributes"] = attributes
        try:
            response = self._client.invoke_endpoint(**request)
            return response["Body"].read()
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code, message = error.get("Code", ""), error.get("Message", "")
            if code == "ModelError":
                status = int(exc.response.get("OriginalStatusCode") or 500)
                raise ModelError(exc.response.get("OriginalMessage") or message, status) from exc
            if (
                code == "ModelNotReadyException"
                or "not in service" in message.lower()
                or "is not ready" in message.lower()
            ):
                raise EndpointNotReadyError(message, code) from exc
            if code == "ValidationError" and "not found" in message.lower():
                raise EndpointNotFoundError(message, code) from exc
            translated = translate(exc, f"invoking endpoint {endpoint}")
            if code in ("ServiceUnavailable", "InternalDependencyException"):
                raise ThrottledError(str(translated), code) from exc
            raise translated from exc
        except BotoCoreError as exc:
            raise translate(exc, f"invoking endpoint {endpoint}") from exc
