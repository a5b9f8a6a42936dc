"""Where droptrain finds the files of its project beside its own code: the training code (SageMaker's
source dir), Chalice's entry point and default stages, the Lambda layer's build script.

``droptrain/bundled/`` holds them: links to the repository's own files in a checkout, their copies
in an installed wheel (package data), so that every command works from either. ``package`` and
``deploy`` work in a project folder: the checkout, or for a wheel the current directory, where
``.chalice/config.json`` keeps the stages (started from droptrain's defaults when it has none) and
``build/`` what is built.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import chalice_app

PACKAGE = Path(__file__).resolve().parent
BUNDLED = PACKAGE / "bundled"
TRAINING_DIR = (BUNDLED / "training").resolve()
LAYER_BUILD = BUNDLED / "layers" / "build.py"
CHECKOUT = PACKAGE.parent


def in_checkout() -> bool:
    """Run from a checkout (an editable install), whose own folder is the Chalice project."""
    return (CHECKOUT / "app.py").is_file() and (CHECKOUT / ".chalice" / "config.json").is_file()


def root() -> Path:
    """Where ``package`` and ``deploy`` read the stages and write ``build/``."""
    return CHECKOUT if in_checkout() else Path.cwd()


def chalice_dir(folder: Path | None = None) -> Path:
    """The ``.chalice`` folder of a Chalice project ready for ``chalice package``: the checkout's own,
    or, under ``folder`` (the current directory), ``build/chalice-app/`` assembled from the wheel's
    copies (``app.py``, ``requirements.txt``, ``chalice_app`` as Chalice's vendor folder) around the
    folder's own ``.chalice``."""
    folder = folder or root()
    if folder == CHECKOUT and in_checkout():
        return CHECKOUT / ".chalice"
    stages = folder / ".chalice"
    if not (stages / "config.json").is_file():
        stages.mkdir(parents=True, exist_ok=True)
        shutil.copy(BUNDLED / "chalice-config.json", stages / "config.json")
    app = folder / "build" / "chalice-app"
    shutil.rmtree(app, ignore_errors=True)
    (app / "vendor").mkdir(parents=True)
    for name in ("app.py", "requirements.txt"):
        shutil.copy(BUNDLED / name, app / name)
    installed = Path(chalice_app.__file__).resolve().parent
    shutil.copytree(installed, app / "vendor" / "chalice_app", ignore=shutil.ignore_patterns("__pycache__"))
    (app / ".chalice").symlink_to(stages.resolve(), target_is_directory=True)
    return app / ".chalice"
