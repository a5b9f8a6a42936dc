"""The ``droptrain`` command."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import sys
import threading
from pathlib import Path

from droptrain.api_client import api_commands
from droptrain.control import control_commands
from droptrain.synthetic import SyntheticDatasetError, make_dataset


def _cmd_make_dataset(args: argparse.Namespace) -> int:
    try:
        summary = make_dataset(args.out, classes=args.classes, per_class=args.per_class, size=args.size, seed=args.seed)
    except SyntheticDatasetError as exc:
        print(f"droptrain make-dataset: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


# Each command imports what it uses inside its own function, on purpose: `droptrain --help`, `package`,
# `deploy` and `upload` start fast and run on the base install, without the local runtime (PyTorch, Ray).
# What the local runtime imports beyond the base install: the `local` extra.
LOCAL_EXTRA = (
    "torch",
    "torchvision",
    "ray",
    "optuna",
    "sagemaker_training",
    "sagemaker_pytorch_container",
    "yaml",
    "matplotlib",
)


def _missing_local_extra(command: str) -> bool:
    """Say in one line, and return True, when the local runtime's packages are not installed."""
    missing = [name for name in LOCAL_EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        print(
            f"droptrain {command}: the local runtime needs droptrain's local extra ({', '.join(missing)} "
            "missing): pip install 'droptrain[local]', or make setup in a checkout",
            file=sys.stderr,
        )
    return bool(missing)


def _cmd_demo(args: argparse.Namespace) -> int:
    if _missing_local_extra("demo"):
        return 1
    from droptrain.demo import DemoError, run_demo

    try:
        run_demo(args.home, args.data, port=args.port, max_trials=args.trials, timeout=args.timeout)
    except DemoError as exc:
        print(f"droptrain demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("droptrain demo: stopped", file=sys.stderr)
        return 130
    return 0


def _terminate_like_ctrl_c() -> None:
    """SIGTERM (``kill``, a service manager, a container stop) takes the Ctrl-C path: jobs ended,
    state saved, no ``train.py`` left running."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _cmd_up(args: argparse.Namespace) -> int:
    if _missing_local_extra("up"):
        return 1

    from droptrain.local.aws.notify import WebhookError
    from droptrain.local.lock import HomeBusyError
    from droptrain.local.runtime import LocalRuntime
    from droptrain.progress import LiveProgress

    api_key = args.api_key or os.environ.get("DROPTRAIN_API_KEY") or None
    if args.host not in LOOPBACK:
        print(
            f"droptrain up: warning: the API on {args.host} is reachable from other machines"
            + (
                "; requests need the x-api-key header"
                if api_key
                else " and anyone who can reach it can use it: pass --api-key (or set DROPTRAIN_API_KEY)"
            ),
            file=sys.stderr,
            flush=True,
        )
    from droptrain.local.settings import SettingsError, for_this_machine, read

    try:
        settings = read(args.config, args.set)
    except SettingsError as exc:
        print(f"droptrain up: {exc}", file=sys.stderr)
        return 1
    for_this_machine(settings, lambda line: print(line, flush=True))
    try:
        runtime = LocalRuntime(args.home, env=settings.env, webhook=args.webhook, on_line=LiveProgress(print))
        runtime.start(host=args.host, port=args.port, api_key=api_key)
    except (HomeBusyError, WebhookError) as exc:
        print(f"droptrain up: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"droptrain up: cannot serve on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    _terminate_like_ctrl_c()  # after Ray has started: it installs a SIGTERM handler of its own
    print(
        f"droptrain is up: console {runtime.api_url}/ ; API {runtime.api_url}; "
        f"drop datasets into {runtime.bucket.path('datasets/')}/ "
        f"(or: droptrain upload PATH --name NAME); notifications in {runtime.publisher.path}. Ctrl-C stops.",
        flush=True,
    )
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        print("stopping: jobs in progress resume on the next start", flush=True)
    finally:
        runtime.stop()
    return 0


def _cmd_upload(args: argparse.Namespace) -> int:
    from chalice_app.adapters.errors import AdapterError
    from chalice_app.names import InvalidNameError, check_dataset_name
    from droptrain.local.aws.bucket import LocalBucket
    from droptrain.local.runtime import BUCKET, upload_to_bucket
    from droptrain.upload import UploadError, upload_to_s3

    name = args.name if args.name is not None else args.path.name.split(".")[0]
    remote = args.to.startswith("s3://")
    bucket = args.to.removeprefix("s3://").split("/")[0] if remote else BUCKET
    try:
        check_dataset_name(name, bucket)
        if remote:
            key = upload_to_s3(args.path, name, args.to)
        else:
            key = upload_to_bucket(LocalBucket(args.home.resolve() / "bucket", BUCKET), args.path, name)
    except (UploadError, InvalidNameError, AdapterError) as exc:
        print(f"droptrain upload: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a full disk, mostly: what was half-written is gone already
        print(
            f"droptrain upload: writing to {args.home.resolve() / 'bucket'} failed: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    print(f"s3://{bucket}/{key}" + ("" if remote else " (droptrain up picks it up)"))
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    from droptrain.local.settings import SettingsError, describe, read

    try:
        print("\n".join(describe(read(args.config, args.set))))
    except SettingsError as exc:
        print(f"droptrain config: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from droptrain.local.store import StoreError
    from droptrain.status import render

    try:
        print(render(args.home))
    except StoreError as exc:  # its disk is full: one line, not a traceback
        print(f"droptrain status: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_package(args: argparse.Namespace) -> int:
    from droptrain import project, template

    try:
        build = project.root() / "build"
        path = template.package(args.stage, build / f"package-{args.stage}", template.build_layer(build / "layer.zip"))
    except template.TemplateError as exc:
        print(f"droptrain package: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


def _cmd_deploy(args: argparse.Namespace) -> int:
    from droptrain import deploy

    try:
        deploy.deploy(args.stage, args.training_image, args.inference_image)
    except deploy.DeployError as exc:
        print(f"droptrain deploy: {exc}", file=sys.stderr)
        return 1
    return 0


def _settings_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="the stage variables to use (default: ./droptrain.toml when there is one)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="one variable for this run, over the file (repeatable)",
    )


def _local_stack_commands(sub) -> None:
    p = sub.add_parser(
        "demo", help="the whole pipeline locally: dataset → tuning → final training → deployment → predictions"
    )
    p.add_argument(
        "--data", type=Path, default=None, help="use this dataset (folder or archive) instead of a synthetic one"
    )
    p.add_argument(
        "--home",
        type=Path,
        default=Path(".droptrain/demo"),
        help="where the demo's local stack keeps its state (reset each run)",
    )
    p.add_argument("--port", type=int, default=0, help="API port (default: any free port)")
    p.add_argument("--trials", type=int, default=4, help="tuning trials")
    p.add_argument("--timeout", type=float, default=900, help="give up after this many seconds")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("up", help="run the local stack: watch the bucket, run jobs, serve the API, until Ctrl-C")
    p.add_argument(
        "--home", type=Path, default=Path(".droptrain"), help="the local stack's state: bucket, jobs, notifications"
    )
    p.add_argument("--host", default="127.0.0.1", help="API bind address (loopback by default)")
    p.add_argument("--port", type=int, default=8000, help="API port")
    p.add_argument("--webhook", default=None, help="also POST every notification to this http(s) URL")
    p.add_argument(
        "--api-key",
        default=None,
        help="require this key in the x-api-key header, as a stage with "
        "API_KEY_REQUIRED does (default: $DROPTRAIN_API_KEY, else none)",
    )
    _settings_flags(p)
    p.set_defaults(func=_cmd_up)

    p = sub.add_parser("config", help="the variables in force for droptrain up, and where each came from")
    _settings_flags(p)
    p.set_defaults(func=_cmd_config)
    control_commands(sub)

    p = sub.add_parser("upload", help="a dataset folder or archive into the local bucket, or to s3://BUCKET")
    p.add_argument("path", type=Path, help="dataset folder or .zip/.tar/.tar.gz/.tgz")
    p.add_argument("--name", default=None, help="dataset name (default: the file or folder name)")
    p.add_argument("--to", default="local", help="'local' (default) or s3://BUCKET (needs AWS credentials)")
    p.add_argument("--home", type=Path, default=Path(".droptrain"), help="the local stack's state")
    p.set_defaults(func=_cmd_upload)

    p = sub.add_parser("status", help="runs, jobs, trials with their metrics, the deployed model")
    p.add_argument("--home", type=Path, default=Path(".droptrain"), help="the local stack's state")
    p.set_defaults(func=_cmd_status)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="droptrain", description="From a folder of labelled images to a tuned classifier behind an API."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "make-dataset", help="write a synthetic image-classification dataset (train/valid/test/<class>/*.jpg)"
    )
    p.add_argument("out", type=Path, help="folder to write the dataset into")
    p.add_argument("--classes", type=int, default=4, help="number of classes (2-256)")
    p.add_argument("--per-class", type=int, default=40, help="images per class, split 70/15/15 into train/valid/test")
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0, help="the same seed writes the same images")
    p.set_defaults(func=_cmd_make_dataset)

    _local_stack_commands(sub)
    api_commands(sub)

    p = sub.add_parser(
        "package", help="build the layer and the stage's SAM template (chalice package + merge template), offline"
    )
    p.add_argument("--stage", default="dev", choices=["dev", "prod"], help="the Chalice stage to package")
    p.set_defaults(func=_cmd_package)

    p = sub.add_parser(
        "deploy", help="deploy the stage to the AWS account of your credentials (see docs/operations.md)"
    )
    p.add_argument("--stage", default="dev", choices=["dev", "prod"], help="the Chalice stage to deploy")
    p.add_argument(
        "--training-image", default=None, help="PyTorch training image URI (default: resolved with the SageMaker SDK)"
    )
    p.add_argument(
        "--inference-image",
        default=None,
        help="Ray Serve inference image URI (default: resolved with the SageMaker SDK)",
    )
    p.set_defaults(func=_cmd_deploy)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
