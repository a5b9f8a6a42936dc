"""The retrain's training job (``POST /projects/{project}/retrain``): pure, as the other request builders.

A final job as a tuned run's, with the serving version's own hyperparameters, but incremental: warm-started
from its ``model.tar.gz`` (the ``warmstart`` channel: train.py ``--warm-start-dir``), a third of its epochs
and a tenth of its learning rate, no ImageNet download (every weight comes from the serving model), the
review queue's labelled images as the ``reviewed`` channel, and the serving model as the gate's baseline.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from chalice_app import sagemaker_requests as requests
from chalice_app.config import Config

EPOCH_SHARE = 3  # a retrain runs a third of the serving version's epochs (at least one)
LR_SHARE = 10  # at a tenth of its learning rate: it refines what the model knows
# Set again by the final job's request, for this stage: not inherited from the serving job.
_FINAL_ONLY = ("reports-uri", "export", "serving-engine", "serving-gpus", "debug-out")


def incremental(hyperparameters: Mapping[str, str]) -> dict[str, str]:
    """The serving job's hyperparameters, made incremental (``epochs``, ``lr``, ``weights``)."""
    out = {k: v for k, v in hyperparameters.items() if k not in _FINAL_ONLY}
    if "epochs" in out:
        out["epochs"] = str(max(1, math.ceil(int(float(out["epochs"].strip('"'))) / EPOCH_SHARE)))
    if "lr" in out:
        out["lr"] = f"{float(out['lr'].strip(chr(34))) / LR_SHARE:.6g}"
    out["weights"] = "none"
    return out


def retrain_request(
    config: Config,
    run: str,
    dataset_uri: str,
    serving_job: Mapping[str, Any],
    serving_model_data: str,
    reviewed_uri: str | None,
) -> dict[str, Any]:
    """The retrain's CreateTrainingJob request, from the serving version's final job (``serving_job``:
    DescribeTrainingJob's answer)."""
    hyperparameters = incremental(serving_job.get("HyperParameters") or {})
    mode = requests.training_input_mode(serving_job)
    request = requests.final_training_request(
        config, run, dataset_uri, hyperparameters, {}, serving_model_data, None, None, mode
    )
    request["InputDataConfig"].append(requests.channel("warmstart", serving_model_data))
    if reviewed_uri:  # an empty prefix would fail the job: the channel only when there is something in it
        request["InputDataConfig"].append(requests.channel("reviewed", reviewed_uri))
    return request
