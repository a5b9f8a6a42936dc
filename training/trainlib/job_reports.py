"""What a debugged and profiled job leaves behind: the rule verdicts, the profile, the HTML report,
and (on SageMaker) their upload to where the pipeline reads them (``runs/<run-id>/reports/``)."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trainlib import artifact, profiling, report, rules
from trainlib.debugging import NullHook
from trainlib.errors import TrainingError

log = logging.getLogger("train")


@dataclass
class Observers:
    """The debugger hook, the step timer and the system sampler of one job; closed once, whatever happens."""

    hook: Any = field(default_factory=NullHook)
    timer: Any = field(default_factory=profiling.NullTimer)
    sampler: profiling.SystemSampler | None = None
    closed: bool = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.timer.close()
        if self.sampler is not None:
            self.sampler.stop()
        self.hook.close()


def write_verdicts(out_dir: Path | None, report_dir: Path) -> list[dict]:
    """The rules judged over the hook's trial (none without a hook), printed and in ``rules.json``."""
    if out_dir is None:
        return []
    verdicts = [asdict(v) for v in rules.evaluate(out_dir)]
    for verdict in verdicts:
        print(
            f"rule={verdict['rule']} status={verdict['status']}"
            + (f" step={verdict['step']}" if verdict["step"] is not None else ""),
            flush=True,
        )
    artifact.write_json(report_dir / "rules.json", verdicts)
    return verdicts


def stop_on_rule_issues(out_dir: Path, epoch: int) -> None:
    issues = [v for v in rules.evaluate(out_dir) if v.status == "IssuesFound"]
    if issues:
        raise TrainingError(
            f"stopped after epoch {epoch}: debugger rule {issues[0].rule} found an issue: {issues[0].message}"
        )


def write_report(
    run_id: str,
    report_dir: Path,
    device_type: str,
    workers: int,
    history: list[dict],
    evaluation: dict,
    verdicts: list[dict],
    observers: Observers,
    setting: dict[str, str] | None = None,
) -> Path | None:
    timer, sampler = observers.timer, observers.sampler
    breakdown, system = timer.breakdown(), sampler.summary()
    profile = {
        "device": device_type,
        "workers": workers,
        "breakdown": breakdown,
        "step_ms": timer.mean_step_ms(),
        "system": system,
        "steps": timer.steps,
        "samples": sampler.samples,
        "torch_ops": timer.torch_summary,
    }
    artifact.write_json(report_dir / "profile.json", profile)
    notes = profiling.findings(
        breakdown, system, history, verdicts, device_type, workers, evaluation, profile["step_ms"], setting
    )
    try:
        path = report.render(
            report_dir / "report.html",
            run_id=run_id,
            history=history,
            evaluation=evaluation,
            verdicts=verdicts,
            profile=profile,
            findings=notes,
        )
    except Exception as exc:  # the model and its metrics are what the job is for: a report never fails it
        log.warning("the training report could not be written: %s: %s", type(exc).__name__, exc)
        return None
    print(f"report={path}", flush=True)
    return path


def upload_reports(report_dir: Path, uri: str, client: Any = None) -> list[str]:
    """On SageMaker, put the reports where the pipeline and people look for them; returns the keys written.
    Locally (``DROPTRAIN_LOCAL``) the executor copies them there, as SageMaker copies a job's outputs."""
    if not os.environ.get("SM_TRAINING_ENV") or os.environ.get("DROPTRAIN_LOCAL") or not report_dir.is_dir():
        return []
    try:
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        log.warning("boto3 is not installed: reports stay in the job's output.tar.gz")
        return []
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    client = client or boto3.client("s3")
    written = []
    for path in sorted(report_dir.iterdir()):
        key = prefix.rstrip("/") + "/" + path.name
        try:
            client.upload_file(str(path), bucket, key)
            written.append(key)
        except (BotoCoreError, ClientError) as exc:
            log.warning("could not upload %s to %s: %s", path.name, uri, exc)
    return written
