"""Build the Lambda layer: ``python layers/build.py OUT.zip`` (see layers/README.md)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PYTHON_VERSION = "3.12"
PLATFORM = "manylinux2014_x86_64"
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def build(out: Path, requirements: Path = HERE / "requirements.txt") -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "python"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-compile",
                "--target",
                str(target),
                "--platform",
                PLATFORM,
                "--implementation",
                "cp",
                "--python-version",
                PYTHON_VERSION,
                "--only-binary=:all:",
                "-r",
                str(requirements),
            ],
            check=True,
        )
        for entry in list(target.iterdir()):
            if entry.name in ("bin", "__pycache__"):
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        out.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(target.rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts:
                    info = zipfile.ZipInfo(str(path.relative_to(target.parent)), _FIXED_TIME)
                    info.external_attr = 0o644 << 16
                    info.compress_type = zipfile.ZIP_DEFLATED
                    zf.writestr(info, path.read_bytes())
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python layers/build.py OUT.zip")
    print(build(Path(sys.argv[1])))
