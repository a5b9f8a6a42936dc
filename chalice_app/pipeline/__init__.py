"""The pipeline's steps, one per event (docs/architecture.md, "The flow").

Each step takes the services and a typed event and returns a short outcome for the log. Every
step is safe to run twice: resource names are derived from the run, "already exists" is success,
and notifications are sent once per run and kind (``notifications.Notifier``).

``datasets`` (an upload: validation, the audit job, the tuning job), ``tuning`` (the tuning job's end, a trial's
failure), ``training`` (the final job's end), ``versions`` (a project's model versions: registration, the
gate, approval and rollback), ``deployment`` (a project's endpoint, its state changes), ``idle``
(endpoints nobody uses: stopped, and started again on demand), ``batch`` (batch predictions over a
prefix), ``drift`` (drift checks on what the endpoints captured), ``review`` (the doubtful answers a person
labels) and ``retrain`` (a warm-started run on the dataset and the labelled images).
"""

from chalice_app.pipeline.batch import batch_changed
from chalice_app.pipeline.datasets import audit_changed, dataset_uploaded
from chalice_app.pipeline.deployment import deploy, endpoint_changed
from chalice_app.pipeline.drift import drift_changed, scheduled_checks
from chalice_app.pipeline.idle import stop_idle
from chalice_app.pipeline.services import Services, rule_verdicts
from chalice_app.pipeline.training import training_changed
from chalice_app.pipeline.tuning import trial_changed, trial_failures, tuning_changed
from chalice_app.pipeline.versions import package_changed

__all__ = [
    "Services",
    "audit_changed",
    "batch_changed",
    "dataset_uploaded",
    "deploy",
    "drift_changed",
    "endpoint_changed",
    "package_changed",
    "stop_idle",
    "rule_verdicts",
    "scheduled_checks",
    "training_changed",
    "trial_changed",
    "trial_failures",
    "tuning_changed",
]
