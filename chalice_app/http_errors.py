"""The REST API's one error shape, and the refusal of a state-changing call another site's page could send."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from typing import Any


def cross_site_refusal(headers: Mapping[str, str]) -> tuple[int, dict[str, Any]] | None:
    """The answer to a state-changing call that a page of another site could have sent; ``None`` if
    it is fine. Without CORS (this API grants none) a page can send only a form's or plain text's
    Content-Type, so requiring ``application/json`` leaves it out; a browser names the page's site in
    ``Origin``, which must then be this API's own host (DNS rebinding is the local server's to refuse)."""
    lowered = {key.lower(): value for key, value in headers.items()}
    content_type = (lowered.get("content-type") or "").split(";")[0].strip().lower()
    if content_type != "application/json":
        return 415, error_body(
            "unsupported_media_type",
            "send Content-Type: application/json (this call changes what every client of the project gets)",
        )
    origin = lowered.get("origin")
    if origin is not None and urllib.parse.urlsplit(origin).netloc.lower() != (lowered.get("host") or "").lower():
        return 403, error_body("foreign_origin", f"a page of {origin[:100]!r} cannot change this API's versions")
    return None


def error_body(code: str, message: str) -> dict[str, Any]:
    """The REST API's one error shape."""
    return {"error": {"code": code, "message": message}}


def api_error(status: int, body: Any) -> dict[str, Any] | None:
    """Chalice's own error answers (``{"Code", "Message"}``: a method the route lacks, an unhandled
    exception) in the API's shape; ``None`` for anything that is already a handler's answer."""
    if status < 400 or not isinstance(body, dict) or set(body) != {"Code", "Message"}:
        return None
    code = re.sub(r"(?<!^)(?=[A-Z])", "_", str(body["Code"]).removesuffix("Error")).lower() or "error"
    message = "the server failed; see its logs" if status >= 500 else str(body["Message"])
    return error_body("internal_error" if status >= 500 else code, message)
