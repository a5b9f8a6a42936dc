"""Rules the deployables state twice because they cannot share code: the Lambda (chalice_app) never
imports the training code, and the training code runs in a container without the orchestrator.
These tests hold each pair to one answer."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from chalice_app import names, predict, validation
from trainlib import arguments, predictor
from trainlib.datasets import discover
from trainlib.errors import DatasetError


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buffer, format="JPEG")
    return buffer.getvalue()


JPEG = _jpeg()


def _tree(spec: dict[str, int]) -> dict[str, bytes]:
    """``{"train/cat": 3}`` → three JPEGs in ``train/cat/``; a key with a file name is one file as it is."""
    files = {}
    for path, count in spec.items():
        if "." in Path(path).name:
            files[path] = JPEG if count else b"not an image"
        else:
            files.update({f"{path}/{i}.jpg": JPEG for i in range(count)})
    return files


TREES = {
    "splits": {"train/cat": 3, "train/dog": 3, "valid/cat": 1, "valid/dog": 1, "test/cat": 1, "test/dog": 1},
    "flat": {"cat": 5, "dog": 5},
    "only train: valid and test carved": {"train/cat": 5, "train/dog": 5},
    "one wrapping folder": {"pets/train/cat": 3, "pets/train/dog": 3},
    "upper-case extensions": {"cat/A.JPG": 1, "cat/B.JPEG": 1, "dog/C.PNG": 1, "dog/D.jpg": 1},
    "hidden and tool folders are not classes": {"cat": 3, "dog": 3, ".ipynb_checkpoints": 3, "__MACOSX": 3},
    "one class": {"train/cat": 5},
    "a class with no images": {"train/cat": 3, "train/dog/notes.txt": 1},
    "valid has a class train lacks": {"train/cat": 3, "train/dog": 3, "valid/cat": 1, "valid/bird": 1},
    "an empty valid split": {"train/cat": 3, "train/dog": 3, "valid/cat/readme.md": 1},
    "too few images to carve a validation split": {"cat": 1, "dog": 1},
}


def _lambda_view(files: dict[str, bytes]) -> tuple[bool, list[str]]:
    report = validation.check_keys((key, len(data)) for key, data in files.items())
    return report.ok, report.classes


def _training_view(files: dict[str, bytes], root: Path) -> tuple[bool, list[str]]:
    for key, data in files.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(data)
    from trainlib.datasets import _descend_single_folder

    try:
        return True, discover(_descend_single_folder(root)).classes
    except DatasetError:
        return False, []


@pytest.mark.parametrize("name", TREES)
def test_the_lambda_and_the_training_job_judge_a_dataset_alike(name, tmp_path):
    files = _tree(TREES[name])
    lambda_ok, lambda_classes = _lambda_view(files)
    training_ok, training_classes = _training_view(files, tmp_path / "dataset")
    assert lambda_ok == training_ok, f"{name}: the Lambda says {lambda_ok}, the training job {training_ok}"
    if lambda_ok:
        assert lambda_classes == training_classes


def test_the_final_job_is_named_alike():
    assert arguments.FINAL_JOB_SUFFIX == names.FINAL_JOB_SUFFIX
    assert names.run_of_final_job(names.final_job_name("pets-1a2b3c4d")) == "pets-1a2b3c4d"


def test_the_endpoint_answers_as_many_labels_as_the_api_may_ask_for():
    assert predictor.TOP_LABELS == predict.MAX_TOP_K


def test_the_api_and_the_endpoint_know_the_same_images_and_errors():
    options = {"invalid_min_confidence", "invalid_explain"}  # the serving application checks its options too
    assert set(predict.MODEL_ERROR_CODES) == {
        predictor.InvalidImageError.code,
        predictor.ImageTooLargeError.code,
        *options,
    }
    for pairs in ([("min_confidence", "2")], [("explain", "yes")]):
        with pytest.raises(predictor.InvalidOptionError) as info:
            predictor.Options.parse(pairs)
        assert info.value.code in options
    assert {predict.sniff(magic + b"x") for magic in predictor.FORMATS} == {"image/jpeg", "image/png"}


def test_the_orchestrator_offers_the_architectures_train_py_knows():
    from chalice_app import config
    from trainlib import models

    assert config.ARCHS == tuple(models.ARCHS)


def test_the_api_sends_its_options_as_the_serving_application_reads_them():
    from urllib.parse import parse_qsl

    request = predict.Request("image/jpeg", 5, explain=True, min_confidence=0.25)
    assert predictor.Options.parse(parse_qsl(request.attributes)) == predictor.Options(True, 0.25)
    assert predictor.Options.parse(parse_qsl(predict.Request("image/png", 1).attributes)) == predictor.Options()
