"""What ``pip install .`` puts into site-packages: the packages and the project's files the commands
need, never a top-level ``app`` module; and the commands working from it, outside any checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from helpers import DEADLINE, ROOT

pytestmark = pytest.mark.packaging


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy of the checkout's tracked files (setuptools writes build/ where it builds)."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in tracked.decode().split("\0"):
        if name and ((ROOT / name).is_file() or (ROOT / name).is_symlink()):
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            if (ROOT / name).is_symlink():  # droptrain/bundled/: links to the project's files
                os.symlink(os.readlink(ROOT / name), source / name)
            else:
                shutil.copy2(ROOT / name, source / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(out),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=DEADLINE,
    )
    (built,) = out.glob("droptrain-*.whl")
    return built


def test_the_wheel_installs_no_top_level_app_module(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.startswith("droptrain-")}
    assert top_level == {"droptrain", "chalice_app"}, "app.py is Chalice's entry point in the checkout only"
    assert "chalice_app/application.py" in names and "droptrain/local/runtime.py" in names
    # The console is served from the package: its files travel with it.
    assets = {p.name for p in (ROOT / "chalice_app" / "assets").iterdir()}
    packaged = {name.removeprefix("chalice_app/assets/") for name in names if name.startswith("chalice_app/assets/")}
    assert packaged == assets


# What only the local runtime and the training code import: the `local` extra, never the base install.
HEAVY = (
    "torch",
    "torchvision",
    "ray",
    "optuna",
    "sagemaker_training",
    "smdebug",
    "matplotlib",
    "pandas",
    "yaml",
    "setproctitle",
    "pyinstrument",
    "psutil",
)


def test_the_base_install_leaves_the_local_runtime_to_its_extra():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = " ".join(project["dependencies"]).lower()
    assert not [name for name in ("torch", "ray", "optuna", "sagemaker-training", "matplotlib") if name in base]
    assert "torch==2.14.1" in project["optional-dependencies"]["local"]


def test_the_orchestrator_and_the_deploy_commands_run_without_the_local_extra(tmp_path):
    """Without the local extra, everything but the local runtime imports, and `droptrain up` says in
    one line what to install."""
    code = (
        f"import sys\nfor name in {HEAVY!r}: sys.modules[name] = None\n"
        "import chalice_app.application, droptrain.deploy, droptrain.template, droptrain.upload\n"
        "import droptrain.synthetic\n"
        "from droptrain import cli\nsys.exit(cli.main(['up', '--home', sys.argv[1]]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "home")], cwd=ROOT, capture_output=True, text=True, timeout=DEADLINE
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        "droptrain up: the local runtime needs droptrain's local extra (torch, torchvision, ray, optuna, "
        "sagemaker_training, yaml, matplotlib missing): pip install 'droptrain[local]', or make setup in a checkout"
    ]
    assert not (tmp_path / "home").exists(), "nothing was started or written"


def _installed(wheel: Path, where: Path) -> Path:
    """The wheel unpacked as pip installs it (its dependencies are this environment's)."""
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(where)
    return where


def _run_installed(site: Path, code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site)}  # the wheel's droptrain, not the checkout's
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=DEADLINE
    )


def test_the_local_runtime_trains_the_same_code_from_a_wheel(wheel, tmp_path):
    """Outside a checkout, the training code the jobs run is the wheel's copy, byte for byte the source
    dir a checkout builds."""
    from droptrain import sourcedir

    site = _installed(wheel, tmp_path / "site")
    code = (
        "from droptrain import project, sourcedir\n"
        "print(project.in_checkout(), project.TRAINING_DIR, sourcedir.build()[1])\n"
    )
    result = _run_installed(site, code, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    in_checkout, where, key = result.stdout.split()
    assert in_checkout == "False" and where.startswith(str(site))
    assert key == sourcedir.build()[1]


def test_droptrain_package_runs_from_a_wheel_in_an_empty_folder(wheel, tmp_path):
    """The stages start from droptrain's defaults in ./.chalice, Chalice packages the wheel's app, and
    the function zip holds app.py and the orchestrator."""
    site = _installed(wheel, tmp_path / "site")
    project = tmp_path / "project"
    project.mkdir()
    layer = project / "layer.zip"
    zipfile.ZipFile(layer, "w").close()  # the layer's own build is tested with the checkout's
    code = (
        "from pathlib import Path\nfrom droptrain import template\n"
        f"print(template.package('dev', Path({str(project / 'out')!r}), Path({str(layer)!r})))\n"
    )
    result = _run_installed(site, code, project)
    assert result.returncode == 0, result.stderr[-2000:]
    template = json.loads(Path(result.stdout.strip()).read_text())
    assert "APIHandler" in template["Resources"] and "DataBucket" in json.dumps(template)
    assert json.loads((project / ".chalice" / "config.json").read_text())["stages"].keys() >= {"dev", "prod"}
    names = zipfile.ZipFile(project / "out" / "deployment.zip").namelist()
    assert "app.py" in names and "chalice_app/application.py" in names
    assert not any(name.startswith(("droptrain/", "training/")) for name in names), "the functions carry no more"
