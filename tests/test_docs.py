"""The documents cannot drift from the code: every link resolves, every variable the configuration
reads is documented (and nothing documented is unread), every notification event is documented with
an example that parses, and every document the code cites is in the repository."""

from __future__ import annotations

import json
import re
from pathlib import Path

from chalice_app.notifications import EVENTS

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS]
CODE = [
    p
    for pattern in (
        "app.py",
        "chalice_app/**/*.py",
        "droptrain/**/*.py",
        "training/**/*.py",
        "tests/**/*.py",
        "bench/*.py",
    )
    for p in ROOT.glob(pattern)
]


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation but '-' dropped, spaces as '-'."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists() or (anchor and file.suffix == ".md" and anchor not in _anchors(file)):
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert broken == []


def test_every_variable_the_configuration_reads_is_documented_and_nothing_else():
    source = (ROOT / "chalice_app" / "config.py").read_text()
    read = set(re.findall(r'env(?:\.get\(|, )"([A-Z][A-Z0-9_]+)"', source))
    # Lambda sets the region; ENDPOINT_NAME is a pre-project stage's spelling of ENDPOINT_PREFIX.
    read -= {"AWS_REGION", "AWS_DEFAULT_REGION", "ENDPOINT_NAME"}
    table = (ROOT / "docs" / "configuration.md").read_text()
    documented = set()
    for row in re.findall(r"^\| (.+?) \|", table, flags=re.M):
        documented |= set(re.findall(r"`([A-Z][A-Z0-9_]+)`", row))
    assert read - documented == set(), "read but not documented"
    assert documented - read == set(), "documented but never read"
    assert "ENDPOINT_NAME" in table, "the old name is explained where its successor is"
    from chalice_app.config import VARIABLES

    assert set(VARIABLES) == read, "config.VARIABLES (what droptrain.toml may set) is what the loader reads"
    assert len(read) > 30


def test_every_notification_event_is_documented_with_an_example_that_parses():
    page = (ROOT / "docs" / "notifications.md").read_text()
    sections = dict(re.findall(r"^## `([a-z.]+)`\n\n```json\n(.+?)\n```", page, flags=re.M | re.S))
    assert set(sections) == set(EVENTS)
    for event, example in sections.items():
        message = json.loads(example)
        assert message["event"] == event
        assert set(message) == {"event", "run_id", "dataset", "status", "job", "time", "detail"}, event


def test_every_document_the_code_cites_is_here():
    missing = []
    for path in CODE:
        text = path.read_text()
        assert "ARCHITECTURE.md" not in text or path.name == "test_docs.py", (
            f"{path} cites a file outside the repository"
        )
        for doc, section in re.findall(r'(docs/[a-z-]+\.md)(?:, "([^"]+)")?', text):
            target = ROOT / doc
            if not target.exists():
                missing.append(f"{path.relative_to(ROOT)}: {doc}")
            elif section and section not in re.findall(r"^#+ (.+)$", target.read_text(), flags=re.M):
                missing.append(f"{path.relative_to(ROOT)}: {doc}, {section!r}")
    assert missing == []


def test_the_readme_reads_in_ten_minutes():
    assert len((ROOT / "README.md").read_text().splitlines()) < 180
