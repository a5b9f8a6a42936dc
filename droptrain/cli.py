"""The ``droptrain`` command."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from droptrain.synthetic import SyntheticDatasetError, make_dataset


def _cmd_make_dataset(args: argparse.Namespace) -> int:
    try:
        summary = make_dataset(args.out, classes=args.classes, per_class=args.per_class, size=args.size, seed=args.seed)
    except SyntheticDatasetError as exc:
        print(f"droptrain make-dataset: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from droptrain.demo import DEMO_HYPERPARAMETERS, DemoError, run_demo

    hyperparameters = dict(DEMO_HYPERPARAMETERS)
    if args.epochs is not None:
        hyperparameters["epochs"] = str(args.epochs)
    try:
        run_demo(args.workdir, args.data, hyperparameters)
    except DemoError as exc:
        print(f"droptrain demo: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_package(args: argparse.Namespace) -> int:
    from droptrain import deploy

    try:
        build = deploy.ROOT / "build"
        template = deploy.package(args.stage, build / f"package-{args.stage}", deploy.build_layer(build / "layer.zip"))
    except deploy.DeployError as exc:
        print(f"droptrain package: {exc}", file=sys.stderr)
        return 1
    print(template)
    return 0


def _cmd_deploy(args: argparse.Namespace) -> int:
    from droptrain import deploy

    try:
        deploy.deploy(args.stage, args.training_image, args.inference_image)
    except deploy.DeployError as exc:
        print(f"droptrain deploy: {exc}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="droptrain", description="From a folder of labelled images to a tuned classifier behind an API.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-dataset", help="write a synthetic image-classification dataset (train/valid/test/<class>/*.jpg)")
    p.add_argument("out", type=Path, help="folder to write the dataset into")
    p.add_argument("--classes", type=int, default=4, help="number of classes (2-256)")
    p.add_argument("--per-class", type=int, default=40, help="images per class, split 70/15/15 into train/valid/test")
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0, help="the same seed writes the same images")
    p.set_defaults(func=_cmd_make_dataset)

    p = sub.add_parser("demo", help="make a dataset, train it under the SageMaker contract, predict a test image")
    p.add_argument("--data", type=Path, default=None, help="use this dataset folder instead of a synthetic one")
    p.add_argument("--workdir", type=Path, default=Path(".droptrain/demo"), help="where the demo keeps its files")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default 4)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("package", help="build the layer and the stage's SAM template (chalice package + merge template), offline")
    p.add_argument("--stage", default="dev", choices=["dev", "prod"], help="the Chalice stage to package")
    p.set_defaults(func=_cmd_package)

    p = sub.add_parser("deploy", help="deploy the stage to the AWS account of your credentials (see README)")
    p.add_argument("--stage", default="dev", choices=["dev", "prod"], help="the Chalice stage to deploy")
    p.add_argument("--training-image", default=None, help="PyTorch training image URI (default: resolved with the SageMaker SDK)")
    p.add_argument("--inference-image", default=None, help="PyTorch inference image URI (default: resolved with the SageMaker SDK)")
    p.set_defaults(func=_cmd_deploy)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
