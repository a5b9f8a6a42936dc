"""The dataset audit finds what was planted in a dataset, names the files, and blocks on what matters."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from droptrain.synthetic import make_dataset
from helpers import DEADLINE, TRAINING_DIR


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted") / "data"
    make_dataset(root, classes=4, per_class=40, size=64, seed=11)
    classes = sorted(p.name for p in (root / "train").iterdir())
    first = lambda split, label: sorted((root / split / label).glob("*.jpg"))[0]  # noqa: E731
    plants = {}
    # 1. a test image also in train (exact), 2. a resized copy of another test image in train (near)
    plants["exact_leak"] = (first("test", classes[0]), root / "train" / classes[0] / "copied-from-test.jpg")
    shutil.copy(*plants["exact_leak"])
    source = first("test", classes[1])
    plants["near_leak"] = (source, root / "train" / classes[1] / "resized-from-test.jpg")
    with Image.open(source) as image:
        image.resize((52, 52)).save(plants["near_leak"][1], quality=90)
    # 3. a training image copied into another class (a labelling mistake)
    plants["mislabelled"] = (first("train", classes[2]), root / "train" / classes[3] / "belongs-elsewhere.jpg")
    shutil.copy(*plants["mislabelled"])
    # 4. a class of three images, 5. a __MACOSX folder, 6. a CMYK JPEG
    (root / "train" / "rare").mkdir()
    for i, path in enumerate(sorted((root / "train" / classes[0]).glob("*.jpg"))[1:4]):
        with Image.open(path) as image:
            image.rotate(90 * (i + 1)).save(root / "train" / "rare" / f"{i}.jpg")
    (root / "train" / "__MACOSX").mkdir()
    (root / "train" / "__MACOSX" / "._x.jpg").write_bytes(b"\x00\x05\x16\x07 resource fork")
    with Image.open(first("train", classes[2])) as image:
        image.convert("CMYK").save(root / "train" / classes[2] / "cmyk.jpg")
    out = tmp_path_factory.mktemp("audit-out")
    result = subprocess.run(
        [sys.executable, str(TRAINING_DIR / "audit.py"), "--data-dir", str(root), "--out-dir", str(out)],
        cwd=TRAINING_DIR,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return {
        "root": root,
        "plants": plants,
        "report": json.loads((out / "audit.json").read_text()),
        "out": out,
        "classes": classes,
    }


def _rel(planted, path) -> str:
    return path.relative_to(planted["root"]).as_posix()


def _pair(report, a: str, b: str) -> dict:
    for duplicate in report["duplicates"]:
        if {f["path"] for f in duplicate["files"]} == {a, b}:
            return duplicate
    raise AssertionError(f"no duplicate pair {a} / {b}")


def test_every_planted_problem_is_reported_with_its_files(planted):
    report, plants = planted["report"], planted["plants"]
    exact = _pair(report, *(_rel(planted, p) for p in plants["exact_leak"]))
    assert (exact["kind"], exact["where"]) == ("exact", "across splits")
    near = _pair(report, *(_rel(planted, p) for p in plants["near_leak"]))
    assert (near["kind"], near["where"]) == ("near", "across splits") and near["score"] >= 0.92
    assert [f["split"] for f in near["files"]] == ["train", "test"], "the earlier split first: the later copy leaks"
    wrong = _pair(report, *(_rel(planted, p) for p in plants["mislabelled"]))
    assert (wrong["kind"], wrong["where"]) == ("exact", "across classes")
    assert wrong in report["possible_mislabels"]
    mislabel = plants["mislabelled"][1].name
    assert any(w.startswith("1 possible mislabel(s)") and mislabel in w for w in report["warnings"])
    assert report["counts"]["train"]["rare"] == 3
    assert report["hidden_folders"] == ["train/__MACOSX"] and "__MACOSX" not in report["classes"]
    assert {"path": f"train/{planted['classes'][2]}/cmyk.jpg", "mode": "CMYK"} in report["not_rgb"]
    assert (
        _rel(planted, plants["exact_leak"][0]) in report["leaked"]
        and _rel(planted, plants["near_leak"][0]) in report["leaked"]
    )


def test_the_blocking_findings_stop_the_run(planted):
    blocking = planted["report"]["blocking"]
    leak = next(b for b in blocking if "test images duplicate images of other splits" in b)
    assert "similarity 1.00" in leak and "AUDIT_FIX=true" in leak and "AUDIT_MAX_LEAKED_TEST_SHARE" in leak
    assert any("fewer than 5 training images: rare (3)" in b for b in blocking)
    page = (planted["out"] / "audit.html").read_text()
    assert "data:image/jpeg;base64," in page and "rare" in page, "thumbnails of the pairs and the class histogram"


def _audit_py(*args) -> None:
    command = [sys.executable, str(TRAINING_DIR / "audit.py"), *map(str, args)]
    result = subprocess.run(command, cwd=TRAINING_DIR, capture_output=True, text=True, timeout=DEADLINE)
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_dataset_audited_in_shards_is_judged_as_a_whole_even_across_shards(planted, tmp_path):
    """ShardedByS3Key deals the objects to the instances; each scans its share, one job merges. The
    planted copies lie on two instances (the original on one, the copy on the other)."""
    files = sorted(p for p in planted["root"].rglob("*") if p.is_file())
    apart = {path: number for number, pair in enumerate(planted["plants"].values()) for path in pair}
    shards = [tmp_path / "instance-1", tmp_path / "instance-2"]
    for index, path in enumerate(files):
        pair = [q for q, n in apart.items() if n == apart.get(path)]
        shard = pair.index(path) if path in apart else index % 2
        target = shards[shard] / path.relative_to(planted["root"])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    for shard in shards:  # each instance writes into the same output prefix
        _audit_py("--mode", "shard", "--data-dir", shard, "--out-dir", tmp_path / "shards")
    assert len(list((tmp_path / "shards").iterdir())) == 2, "one file per instance, none overwritten"
    _audit_py("--mode", "merge", "--data-dir", tmp_path / "shards", "--out-dir", tmp_path / "merged")
    merged, whole = json.loads((tmp_path / "merged" / "audit.json").read_text()), planted["report"]
    for key in ("counts", "leaked", "blocking", "warnings", "unreadable", "hidden_folders", "not_rgb", "classes"):
        assert merged[key] == whole[key], key
    assert merged["duplicates"] == whole["duplicates"], "every pair, the cross-shard ones included"
    exact = _pair(merged, *(_rel(planted, p) for p in planted["plants"]["exact_leak"]))
    assert exact["where"] == "across splits"
    page = (tmp_path / "merged" / "audit.html").read_text()
    assert page.count("data:image/jpeg;base64,") >= 2 * len(merged["duplicates"][:60]), "each pair's two thumbnails"


def test_a_clean_dataset_has_no_blocking_finding(tmp_path):
    root = tmp_path / "clean"
    make_dataset(root, classes=3, per_class=20, size=64, seed=5)
    result = subprocess.run(
        [sys.executable, str(TRAINING_DIR / "audit.py"), "--data-dir", str(root), "--out-dir", str(tmp_path / "o")],
        cwd=TRAINING_DIR,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "o" / "audit.json").read_text())
    assert report["blocking"] == [] and report["unreadable"] == [] and report["hidden_folders"] == []
    assert not [d for d in report["duplicates"] if d["where"] == "across splits"], report["duplicate_summary"]


def test_audit_fix_drops_the_held_out_duplicates_from_training_s_splits(tmp_path, shared_warm):
    """AUDIT_FIX: train.py gets the audit's report as its ``audit`` channel and leaves the leaked
    valid/test images out (never train's)."""
    from helpers import FAST_HYPERPARAMETERS, hyperparameter_args, run_train

    root = tmp_path / "data"
    make_dataset(root, classes=3, per_class=30, size=48, seed=2)
    label = sorted(p.name for p in (root / "train").iterdir())[0]
    leak = sorted((root / "test" / label).glob("*.jpg"))[0]
    shutil.copy(leak, root / "train" / label / "leak.jpg")
    audit_dir = tmp_path / "audit"
    assert (
        subprocess.run(
            [sys.executable, str(TRAINING_DIR / "audit.py"), "--data-dir", str(root), "--out-dir", str(audit_dir)],
            cwd=TRAINING_DIR,
            capture_output=True,
            timeout=DEADLINE,
        ).returncode
        == 0
    )
    assert json.loads((audit_dir / "audit.json").read_text())["leaked"] == [leak.relative_to(root).as_posix()]
    result = run_train(
        [
            *hyperparameter_args({**FAST_HYPERPARAMETERS, "epochs": "1"}),
            "--data-dir",
            str(root),
            "--no-checkpoints",
            "--model-dir",
            str(tmp_path / "m"),
            "--output-data-dir",
            str(tmp_path / "o"),
            "--audit-dir",
            str(audit_dir),
        ],
        warm=shared_warm,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "audit: 1 held-out images dropped as duplicates of other splits" in result.stdout
    evaluation = json.loads((tmp_path / "o" / "evaluation.json").read_text())
    test_images = len(list((root / "test").rglob("*.jpg")))
    assert sum(c["support"] for c in evaluation["per_class"].values()) == test_images - 1


def test_the_local_stack_audits_and_rejects_the_planted_dataset(planted, tmp_path, ray_serve, shared_warm):
    """Through the local runtime: the upload's audit job (a local Processing job running audit.py from
    the source dir) ends, and its blocking findings reject the run before any training."""
    import time

    from droptrain.local.runtime import LocalRuntime

    runtime = LocalRuntime(tmp_path / "home", say=lambda m: None, serving=ray_serve, warm=shared_warm)
    runtime.start(serve_api=False)
    try:
        runtime.upload(planted["root"], "planted")
        deadline = time.time() + DEADLINE
        while time.time() < deadline and not any(
            n["message"]["event"] == "dataset.rejected" for n in runtime.notifications()
        ):
            time.sleep(0.3)
        events = [n["message"] for n in runtime.notifications()]
        assert [e["event"] for e in events] == ["dataset.accepted", "dataset.rejected"], events
        rejected = events[-1]["detail"]
        assert rejected["checked"] == "audit" and any("rare (3)" in r for r in rejected["reasons"])
        assert _rel(planted, planted["plants"]["exact_leak"][0]) in rejected["leaked"]
        assert runtime.bucket.path_of_uri(rejected["page"]).is_file()
        assert runtime.store.names("tuning-job") == [], "nothing trained"
    finally:
        runtime.stop()


def _run_until(runtime, events: set[str], timeout: float = 600) -> list[dict]:
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        messages = [n["message"] for n in runtime.notifications()]
        if any(m["event"] in events or m["event"].endswith(("failed", "rejected")) for m in messages):
            return messages
        time.sleep(0.3)
    raise AssertionError(f"none of {events} in {timeout}s: {[n['message']['event'] for n in runtime.notifications()]}")


def test_distinct_scans_deploy_and_copies_of_test_scans_are_rejected_on_the_local_stack(
    tmp_path, ray_serve, shared_warm
):
    """Hundreds of distinct grey scans in ten classes go through the local stack with the audit's
    defaults and deploy; the same scans with 5% of the test images copied into train (resized,
    re-encoded) are rejected, naming those copies."""
    import duplicate_benchmark as benchmark

    from droptrain.local.runtime import LocalRuntime

    benchmark.write_scans(tmp_path / "scans", limit=400)
    leaked = benchmark.write_scans(tmp_path / "leaky", limit=400, leak_share=0.05)
    static = {"arch": "resnet18", "weights": "none", "train-mode": "head", "image-size": "32", "epochs": "1"}
    env = {"MAX_TUNING_JOBS": "1", "STATIC_HYPERPARAMETERS": json.dumps(static)}
    runtime = LocalRuntime(tmp_path / "home", env=env, say=lambda m: None, serving=ray_serve, warm=shared_warm)
    runtime.start(serve_api=False)
    try:
        runtime.upload(tmp_path / "scans", "scans")
        messages = _run_until(runtime, {"deployment.completed"})
        assert [m["event"] for m in messages][-1] == "deployment.completed", messages[-1]
        audited = next(m for m in messages if m["event"] == "dataset.audited")["detail"]
        assert audited["leaked"] == []
        assert audited["warnings"] == ["all 400 image(s) are grey (L); training converts them to RGB"]
        report = json.loads(runtime.bucket.path_of_uri(audited["audit"]).read_text())
        assert report["duplicates"] == [] and len(report["not_rgb"]) == 400, "one line told, the full list kept"
        before = len(messages)
        runtime.upload(tmp_path / "leaky", "leaky")
        messages = _run_until(runtime, {"dataset.rejected"})[before:]
        assert [m["event"] for m in messages] == ["dataset.accepted", "dataset.rejected"], messages
        rejected = messages[-1]["detail"]
        assert rejected["checked"] == "audit" and rejected["leaked"] == leaked
        assert any(leaked[0] in reason and "AUDIT_FIX=true" in reason for reason in rejected["reasons"])
    finally:
        runtime.stop()


POOLED_SCAN = """
import os, sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from trainlib import audit

pools = []
def counted(workers):
    pools.append(workers)
    return ProcessPoolExecutor(workers)
audit.ProcessPoolExecutor = counted
seen = []
for cores in ({0}, {0, 1}):
    os.sched_getaffinity = lambda pid, cores=cores: cores
    found = audit.scan(Path(sys.argv[1]))
    seen.append(found.samples)
print(pools, seen[0] == seen[1], len(seen[0]))
"""


def test_the_scan_decodes_in_a_pool_only_where_it_has_several_cores(tmp_path):
    """A container given one core scans in its own process; one given two shares the images out, with
    the same result."""
    make_dataset(tmp_path / "data", classes=4, per_class=110, size=16, seed=5)
    result = subprocess.run(
        [sys.executable, "-c", POOLED_SCAN, str(tmp_path / "data")],
        cwd=TRAINING_DIR,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["[2]", "True", "440"]


def test_the_audits_processes_run_one_numerical_thread_each():
    """The audit parallelises over processes; numpy's BLAS threads on top of them spin-wait for cores
    the other processes hold (on a busy machine: four times the CPU, five times the time)."""
    code = (
        "import os, runpy, sys\n"
        "for name in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'): os.environ.pop(name, None)\n"
        "runpy.run_path('audit.py', run_name='audit')\n"
        "import numpy, threadpoolctl\n"
        "numpy.ones((64, 64)) @ numpy.ones((64, 64))\n"
        "print(max(pool['num_threads'] for pool in threadpoolctl.threadpool_info()))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=TRAINING_DIR, env=env, capture_output=True, text=True, timeout=DEADLINE
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == "1"
