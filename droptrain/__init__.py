"""The ``droptrain`` command and the embedded local runtime.

It runs from a checkout (``make demo`` installs it in editable mode): ``training/``, ``app.py`` and
``chalice_app/`` beside this package are the very code that SageMaker and Lambda run, and the
local runtime imports them from there rather than from copies."""

import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def use_project_code() -> None:
    """Make ``app`` and ``chalice_app`` importable from the checkout."""
    if not (PROJECT_ROOT / "app.py").is_file():
        raise ImportError(f"droptrain must run from its checkout: {PROJECT_ROOT / 'app.py'} is missing")
    if str(PROJECT_ROOT) not in sys.path:
        sys.path.insert(0, str(PROJECT_ROOT))
