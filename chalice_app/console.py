"""The web console's files (``chalice_app/assets/``), served by the app itself: the page needs nothing
from elsewhere, so it works offline, and its content security policy lets it reach only the app."""

from __future__ import annotations

from functools import cache
from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
# Everything from the app itself; images the user picks are shown from blob: URLs. No inline script
# or style, no frames, no form posts elsewhere.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
# The training report is one self-contained HTML file (inline styles, plots as data: images, no script).
REPORT_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src data:; style-src 'unsafe-inline'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


@cache
def asset(name: str) -> str:
    return (ASSETS / name).read_text(encoding="utf-8")
