"""A stand-in for training/train.py with the same contract and scripted behaviour, so the local
executor's tests run in seconds: valid_accuracy rises with the epoch and peaks at lr=0.005, a
learning rate at or above FAIL_AT_LR fails the job through SageMaker's failure file, and the model
folder receives a copy of a real trained model (FAKE_MODEL_SOURCE) when one is given."""

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

parser = argparse.ArgumentParser()
for name in ("lr", "weight-decay"):
    parser.add_argument(f"--{name}", type=float, default=0.001)
for name in ("epochs", "batch-size"):
    parser.add_argument(f"--{name}", type=int, default=3)
args, _ = parser.parse_known_args()
# Where train.py keeps its checkpoints: /opt/ml/checkpoints, relocated as the training toolkit is.
args.checkpoint_dir = Path(os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml")) / "checkpoints"

log = Path(os.environ["FAKE_LOG"]) if os.environ.get("FAKE_LOG") else None
if log:
    with log.open("a") as handle:
        handle.write(json.dumps({"job": os.environ["TRAINING_JOB_NAME"], "start": time.time(), "pid": os.getpid(),
                                 "threads": os.environ.get("OMP_NUM_THREADS"),
                                 "gpu": os.environ.get("CUDA_VISIBLE_DEVICES")}) + "\n")
# FAKE_RENDEZVOUS=DIR:N: announce this job in DIR, wait (up to 20 s) until N jobs are running at once,
# and record how many were: the executor's parallelism seen from the jobs, not guessed from the clock.
rendezvous = os.environ.get("FAKE_RENDEZVOUS")
if rendezvous:
    folder, wanted = Path(rendezvous.rsplit(":", 1)[0]), int(rendezvous.rsplit(":", 1)[1])
    me = folder / os.environ["TRAINING_JOB_NAME"]
    me.write_text("running")
    running = lambda: sum(1 for p in folder.iterdir() if p.read_text() == "running")  # noqa: E731
    deadline = time.time() + 20
    while running() < wanted and time.time() < deadline:
        time.sleep(0.02)
    (folder.parent / "peers.jsonl").open("a").write(json.dumps({"job": me.name, "running": running()}) + "\n")
if args.lr >= float(os.environ.get("FAIL_AT_LR", "1e9")):
    Path(os.environ["SM_OUTPUT_DIR"]).mkdir(parents=True, exist_ok=True)
    (Path(os.environ["SM_OUTPUT_DIR"]) / "failure").write_text(f"the training loss became NaN (lr={args.lr})")
    print("error: the training loss became NaN", file=sys.stderr)
    sys.exit(1)
quality = math.exp(-abs(math.log10(args.lr) - math.log10(0.005)))  # 1.0 at lr=0.005
done = args.checkpoint_dir / "epochs.txt"
start = int(done.read_text()) + 1 if done and done.exists() else 1
if start > 1:
    print(f"resumed from checkpoint at epoch {start - 1}", flush=True)
for epoch in range(start, args.epochs + 1):
    time.sleep(float(os.environ.get("FAKE_EPOCH_SECONDS", "0.05")))
    accuracy = quality * (1 - 0.5 ** epoch)
    if done:
        done.parent.mkdir(parents=True, exist_ok=True)
        done.write_text(str(epoch))
    print(f"epoch={epoch} train_loss={1 - accuracy:.4f} valid_loss={1.1 - accuracy:.4f} "
          f"valid_accuracy={accuracy:.4f}", flush=True)
print(f"test_loss={1 - quality:.4f} test_accuracy={quality * 0.95:.4f}", flush=True)
model_dir = Path(os.environ["SM_MODEL_DIR"])
if os.environ.get("FAKE_MODEL_SOURCE"):
    shutil.copytree(os.environ["FAKE_MODEL_SOURCE"], model_dir, dirs_exist_ok=True)
else:
    (model_dir / "model.json").write_text(json.dumps({"lr": args.lr}))
Path(os.environ["SM_OUTPUT_DATA_DIR"], "evaluation.json").write_text("{}")
if log:
    with log.open("a") as handle:
        handle.write(json.dumps({"job": os.environ["TRAINING_JOB_NAME"], "end": time.time()}) + "\n")
if rendezvous:
    me.write_text("done")
