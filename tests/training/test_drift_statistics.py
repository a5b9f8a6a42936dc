"""The drift check's statistics (``trainlib.drift``): its false-alarm rate on same-distribution samples, its
power on shifted ones, the label shift, and inverted colours seen in a real network's embedding space."""

from __future__ import annotations

import torch
from PIL import Image, ImageOps

from trainlib import drift, models
from trainlib.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform


def _p_values(shift: float, trials: int, n: int = 60, dims: int = 32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    values = []
    for trial in range(trials):
        x = torch.randn(n, dims, generator=generator)
        y = torch.randn(n, dims, generator=generator)
        y[:, :4] += shift
        values.append(drift.mmd_test(x, y, permutations=100, seed=trial)[1])
    return torch.tensor(values)


def test_same_distribution_samples_are_rarely_called_drift():
    # A permutation test's false-alarm rate is at most its level: 300 checks, with room for chance (two
    # standard deviations of a binomial); 100 of them once gave 13 at 0.05, 300 give 5.7%.
    p = _p_values(0.0, trials=300)
    assert float((p < 0.05).float().mean()) <= 0.08
    assert float((p < drift.ALPHA).float().mean()) <= 0.025


def test_a_shift_in_a_few_features_is_found():
    assert float((_p_values(1.0, trials=100) < drift.ALPHA).float().mean()) >= 0.95


def test_the_p_value_is_that_of_the_permutations_and_the_statistic_is_unbiased():
    x = torch.randn(40, 8, generator=torch.Generator().manual_seed(0))
    statistic, p = drift.mmd_test(x, x.clone() + 5.0, permutations=50)
    assert p == 1 / 51 and statistic > 0, "nothing among 50 relabellings is as far apart"
    same, _ = drift.mmd_test(x[:20], x[20:], permutations=10)
    assert abs(same) < statistic / 10


def test_too_few_captures_say_so_and_the_labels_that_moved_are_named():
    classes = ["cat", "dog", "fox"]
    reference = drift.reference(torch.randn(300, 8), torch.tensor([0] * 100 + [1] * 100 + [2] * 100), classes)
    few = drift.check(reference, torch.randn(drift.MIN_SAMPLE - 1, 8), torch.zeros(drift.MIN_SAMPLE - 1))
    assert few == {"status": "not_enough_data", "sample_size": drift.MIN_SAMPLE - 1, "minimum": drift.MIN_SAMPLE}
    verdict = drift.check(reference, torch.randn(90, 8), torch.tensor([0] * 80 + [1] * 10))
    assert verdict["status"] in ("drift", "no_drift") and verdict["sample_size"] == 90
    labels = verdict["labels"]
    # Shares 8/9, 1/9, 0 against a third each: half the sum of the moves.
    assert labels["distance"] == round((abs(8 / 9 - 1 / 3) + abs(1 / 9 - 1 / 3) + 1 / 3) / 2, 4)
    assert [m["label"] for m in labels["most_shifted"]][:2] == ["cat", "fox"]
    assert labels["most_shifted"][0] == {"label": "cat", "reference_share": 0.3333, "share": 0.8889}


def test_the_reference_is_kept_small_and_reads_back(tmp_path):
    kept = drift.reference(
        torch.randn(drift.REFERENCE_IMAGES + 200, 16), torch.zeros(drift.REFERENCE_IMAGES + 200), ["a"]
    )
    assert kept["embeddings"].shape == (drift.REFERENCE_IMAGES, 16) and kept["embeddings"].dtype == torch.float16
    drift.save_reference(tmp_path, kept)
    read = drift.load_reference(tmp_path)
    assert torch.equal(read["embeddings"], kept["embeddings"]) and read["label_counts"] == [
        drift.REFERENCE_IMAGES + 200
    ]
    assert drift.load_reference(tmp_path / "none") is None


def test_inverted_colours_are_drift_in_a_networks_embedding_space_and_fresh_images_are_not(tmp_path):
    from droptrain.synthetic import make_dataset

    make_dataset(tmp_path, classes=4, per_class=60, size=48, seed=3)
    torch.manual_seed(0)
    model = models.build_model("resnet18", 4).eval()
    backbone = models.backbone_of(model, "resnet18")
    transform = eval_transform(48, IMAGENET_MEAN, IMAGENET_STD, 55)

    def embeddings(paths, invert=False):
        images = [Image.open(p).convert("RGB") for p in paths]
        tensors = torch.stack([transform(ImageOps.invert(i) if invert else i) for i in images])
        return drift.embed(backbone, tensors.split(32))

    train = sorted((tmp_path / "train").rglob("*.jpg"))
    held = sorted((tmp_path / "valid").rglob("*.jpg")) + sorted((tmp_path / "test").rglob("*.jpg"))
    reference = drift.reference(embeddings(train), torch.zeros(len(train)), ["a", "b", "c", "d"])
    fresh = drift.check(reference, embeddings(held), torch.zeros(len(held)))
    inverted = drift.check(reference, embeddings(held, invert=True), torch.zeros(len(held)))
    assert fresh["status"] == "no_drift", fresh
    assert inverted["status"] == "drift" and inverted["p_value"] < drift.ALPHA, inverted


def test_the_final_job_keeps_its_reference_in_the_artifact(trained_job):
    import json
    import tarfile

    model_dir = trained_job["paths"].model
    meta = json.loads((model_dir / "model.json").read_text())
    kept = drift.load_reference(model_dir)
    assert kept["classes"] == meta["classes"] and sum(kept["label_counts"]) == kept["embeddings"].shape[0] > 0
    assert kept["embeddings"].shape[1] == 512, "ResNet-18's pooled features, what its head reads"
    assert any(line.startswith("drift reference: ") for line in trained_job["lines"])
    with tarfile.open(trained_job["archive"]) as tar:
        assert drift.REFERENCE_FILE in tar.getnames()
