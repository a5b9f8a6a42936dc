"""``training/`` as SageMaker's script-mode source dir: a reproducible ``sourcedir.tar.gz`` named by its content.

The training toolkit in the container downloads it (``sagemaker_submit_directory``), extracts it to
``/opt/ml/code`` and runs ``sagemaker_program`` from there. ``droptrain deploy`` uploads it to the
stage's bucket; the local runtime puts it in the local bucket, where the local SageMaker's toolkit
runs read it.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

from droptrain import project

TRAINING_DIR = project.TRAINING_DIR


def build(training_dir: Path = TRAINING_DIR, include_requirements: bool = True) -> tuple[bytes, str]:
    """The tar.gz with fixed metadata, and its key ``code/sourcedir-<hash>.tar.gz``.

    ``include_requirements=False`` leaves out ``requirements.txt``: the local runtime's "image" is the
    project's ``.venv``, which ``make setup`` built with that file installed the way the container
    installs it, and a toolkit run must never pip-install into a user's environment."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=9) as tar:
        for path in sorted(training_dir.rglob("*")):
            relative = path.relative_to(training_dir)
            # Caches beside the code (__pycache__, .mypy_cache, .pytest_cache) are not the code.
            if any(part == "__pycache__" or part.startswith(".") for part in relative.parts):
                continue
            if path.suffix == ".pyc" or not path.is_file():
                continue
            if not include_requirements and relative.as_posix() == "requirements.txt":
                continue
            info = tar.gettarinfo(str(path), arcname=str(relative))
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            with path.open("rb") as handle:
                tar.addfile(info, handle)
    # gzip writes the time into its header: hash the content that matters, not the wrapper.
    digest = hashlib.sha256()
    with tarfile.open(fileobj=io.BytesIO(buffer.getvalue())) as tar:
        for member in tar.getmembers():
            digest.update(member.name.encode() + b"\0" + tar.extractfile(member).read())
    return buffer.getvalue(), f"code/sourcedir-{digest.hexdigest()[:16]}.tar.gz"
