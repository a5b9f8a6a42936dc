"""Local training jobs: CreateTrainingJob's request in, DescribeTrainingJob's shape and "SageMaker Training
Job State Change" events out, each job run by AWS's training toolkit (``droptrain.local.sagemaker.jobs``).

A job's output is parsed with the request's MetricDefinitions as it runs; ``model.tar.gz`` and
``output.tar.gz`` are packed where SageMaker puts them; the reports the final job writes are copied
where ``train.py`` uploads them on SageMaker. A job always ends Completed, Failed (with the reason)
or Stopped, whatever goes wrong in the runner; only a runtime that is stopping leaves it InProgress,
to be run again from its checkpoints on the next start.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from chalice_app.adapters.errors import AdapterError
from droptrain.local.aws.bucket import LocalBucket
from droptrain.local.engines.warm import WarmInterpreter, WarmInterpreterError
from droptrain.local.sagemaker import jobs
from droptrain.local.sagemaker.hosts import Cluster, Machine, Others
from droptrain.local.sagemaker.lifecycle import TERMINAL, Emit, JobKind, Jobs, kill
from droptrain.local.sagemaker.output import JobOutput
from droptrain.local.sagemaker.resources import arn, now, request_tags
from droptrain.local.store import Store

log = logging.getLogger(__name__)
OnLine = Callable[[str, str], None]
OnMetric = Callable[[str, float, int], bool]
TRAINING = JobKind(
    store_kind="training-job",
    arn_kind="training-job",
    prefix="TrainingJob",
    end_field="TrainingEndTime",
    detail_type="SageMaker Training Job State Change",
    hidden=("Tags", "TuningJobName", "Trial"),
    missing="Could not find training job '{arn}'",
    missing_code="ValidationException",
)


class TrainingJobs(Jobs):
    kind = TRAINING

    def __init__(
        self,
        store: Store,
        bucket: LocalBucket,
        jobs_root: Path,
        emit: Emit,
        on_line: OnLine,
        job_env: Mapping[str, str],
        stopping: threading.Event,
        warm: WarmInterpreter | None = None,
        gpus: int = 0,
    ):
        super().__init__(store, emit)
        self.bucket, self.jobs_root = bucket, jobs_root
        self.warm = warm
        self.gpus = gpus
        self.machine = Machine(gpus)
        self.on_line = on_line
        self.job_env = dict(job_env)
        self.stopping = stopping

    def create(self, request: Mapping[str, Any], tuning_job: str | None = None, trial: int | None = None) -> bool:
        name = request["TrainingJobName"]
        record = {
            "SecondaryStatus": "Starting",
            "HyperParameters": request.get("HyperParameters", {}),
            "AlgorithmSpecification": request["AlgorithmSpecification"],
            "RoleArn": request["RoleArn"],
            "InputDataConfig": request.get("InputDataConfig", []),
            "OutputDataConfig": request["OutputDataConfig"],
            "ResourceConfig": request["ResourceConfig"],
            "StoppingCondition": request["StoppingCondition"],
            "Environment": request.get("Environment", {}),
            "Tags": request_tags(request),
        }
        if request.get("CheckpointConfig"):
            record["CheckpointConfig"] = request["CheckpointConfig"]
        if tuning_job:
            record.update(
                TuningJobArn=arn("hyper-parameter-tuning-job", tuning_job), TuningJobName=tuning_job, Trial=trial
            )
        return self.insert(name, record)

    # -- running one ------------------------------------------------------------------------------

    def run(self, name: str, on_metric: OnMetric | None = None, share: int = 1) -> str:
        """Run the job to its end and return its status; ``on_metric`` returning ``True`` stops it (pruning).
        ``share``: how many jobs run at once (a tuning job's parallel trials), each given its part
        of the machine. Whatever fails in the runner fails the job, with the reason, as SageMaker would."""
        paths = jobs.JobPaths(self.jobs_root / name)
        try:
            status = self._attempt(name, self.store.get("training-job", name), paths, on_metric, share)
        except Exception as exc:  # noqa: BLE001 - not the user's error: reported on the job as SageMaker's own failure
            log.exception("local training job %s failed in its runner", name)
            status = self.end(
                name,
                "Failed",
                SecondaryStatus="Failed",
                FailureReason=f"InternalServerError: the local runner failed: {type(exc).__name__}: {exc}"[:1024],
            )
        if status in TERMINAL:
            jobs.clean_up(paths)  # nothing will resume it: scratch space and checkpoints go
        return status

    def clean_ended(self) -> None:
        """Scratch space and checkpoints of jobs that ended while a killed runtime could not clean up."""
        for name, status, _ in self.store.records("training-job"):
            if status in TERMINAL:
                jobs.clean_up(jobs.JobPaths(self.jobs_root / name))

    def _attempt(
        self, name: str, record: Mapping[str, Any], paths: jobs.JobPaths, on_metric: OnMetric | None, share: int = 1
    ) -> str:
        if self.stop_requested(name):
            return self.end(name, "Stopped", SecondaryStatus="Stopped")
        if sum(jobs.end_leftovers(p) for p in [paths, *jobs.host_folders(paths)]):  # a runtime killed with -9 left them
            log.warning("ended what a previous runtime left running of %s", name)
        try:
            cluster = Cluster.of(name, paths, record)
            self._prepare(cluster, record)
        except (jobs.JobSetupError, AdapterError) as exc:  # no such object, or a key the bucket refuses
            return self.end(name, "Failed", SecondaryStatus="Failed", FailureReason=f"ClientError: {exc}")
        self.store.update(
            "training-job", name, SecondaryStatus="Training", TrainingStartTime=now(), LastModifiedTime=now()
        )
        output = JobOutput(
            [(d["Name"], re.compile(d["Regex"])) for d in record["AlgorithmSpecification"].get("MetricDefinitions", [])]
        )
        # An attempt a restart interrupted printed metrics that this one, resuming from its
        # checkpoint, will not print again: they count, as CloudWatch keeps a restarted job's log.
        pruned = self._replay(paths, output, on_metric)
        status_code, pruned, failed = (
            self._stream(name, cluster, record, output, on_metric, share) if not pruned else (0, True, paths)
        )
        self.store.update("training-job", name, FinalMetricDataList=output.final())
        if self.stop_requested(name):
            return self.end(name, "Stopped", SecondaryStatus="Stopped")
        if self.stopping.is_set() and not pruned:
            return "InProgress"  # the runtime is stopping: the job resumes on the next start
        if pruned:
            return self.end(name, "Stopped", SecondaryStatus="Stopped", FailureReason="stopped early by the tuning job")
        if status_code != 0:
            return self.end(
                name,
                "Failed",
                SecondaryStatus="Failed",
                FailureReason=jobs.failure_reason(failed, status_code, output.tail),
            )
        if not (paths.output / "success").exists():
            # AWS's toolkit exits 0 when writing its failure file fails (a full disk): its success file is the word.
            last = next((line for line in reversed(output.tail) if line.strip()), "")
            reason = f"AlgorithmError: the job ended without reporting success (is its disk full?): {last[-400:]}"
            return self.end(name, "Failed", SecondaryStatus="Failed", FailureReason=reason)
        return self.end(
            name,
            "Completed",
            SecondaryStatus="Completed",
            ModelArtifacts={"S3ModelArtifacts": self._upload_outputs(name, paths, record)},
        )

    def _replay(self, paths: jobs.JobPaths, output: JobOutput, on_metric: OnMetric | None) -> bool:
        """Feed the job's earlier output through the metric parser; ``True`` if it says prune."""
        pruned = False
        for line in jobs.read_log(paths):
            for metric, value, count in output.read(line):
                pruned = pruned or bool(on_metric and on_metric(metric, value, count))
        return pruned

    def _local_file(self, uri: str, what: str) -> Path:
        path = self.bucket.path_of_uri(uri)
        if not path.exists():
            raise jobs.JobSetupError(f"no {what} at {uri}")
        return path

    def _prepare(self, cluster: Cluster, record: Mapping[str, Any]) -> None:
        """Each host's /opt/ml as SageMaker lays it out before the container starts."""
        hyperparameters = dict(record["HyperParameters"])
        if "sagemaker_submit_directory" in hyperparameters:
            hyperparameters["sagemaker_submit_directory"] = str(
                self._local_file(hyperparameters["sagemaker_submit_directory"], "training code")
            )
        for host, paths in zip(cluster.names, cluster.paths):
            for channel in record["InputDataConfig"]:
                uri = channel["DataSource"]["S3DataSource"]["S3Uri"]
                jobs.stage_channel(paths, channel["ChannelName"], self._local_file(uri, "data"))
            jobs.write_config(
                paths,
                hyperparameters,
                record["InputDataConfig"],
                record["ResourceConfig"]["InstanceType"],
                record.get("CheckpointConfig"),
                cluster.names,
                host,
            )
            for stale in (paths.failure, paths.output / "success"):  # from an attempt a restart interrupted
                stale.unlink(missing_ok=True)
            jobs.fresh_scratch(paths)

    def _stream(
        self,
        name: str,
        cluster: Cluster,
        record: Mapping[str, Any],
        output: JobOutput,
        on_metric: OnMetric | None,
        share: int = 1,
    ) -> tuple[int, bool, jobs.JobPaths]:
        """Every host's toolkit run to its end: the exit status, whether it was pruned, and the host
        whose failure file says why it failed."""
        gpus = self.machine.take(len(cluster.names))
        try:
            envs = [
                jobs.toolkit_env(
                    paths,
                    name,
                    record["TrainingJobArn"],
                    record.get("Environment", {}),
                    extra={**self.job_env, **self.machine.part(share * len(cluster.names), gpu)},
                )
                | cluster.environment()
                for paths, gpu in zip(cluster.paths, gpus)
            ]
            return self._follow(name, cluster, envs, output, on_metric)
        finally:
            self.machine.give_back(gpus)

    def _follow(
        self,
        name: str,
        cluster: Cluster,
        envs: list[dict[str, str]],
        output: JobOutput,
        on_metric: OnMetric | None,
    ) -> tuple[int, bool, jobs.JobPaths]:
        paths = cluster.paths[0]
        process = self._start_process(name, paths, envs[0], cold=cluster.distributed)
        jobs.record_runner(paths, process)
        pruned = False
        with self.running(name, process), jobs.open_log(paths) as log_file:

            def write(line: str) -> None:
                log_file.write(line + "\n")
                self.on_line(name, line)

            others = Others(cluster, write)
            try:
                others.start(envs[1:], process)
                for line in process.stdout:
                    line = line.rstrip("\n")
                    write(line)
                    for metric, value, count in output.read(line):
                        if on_metric and not pruned and on_metric(metric, value, count):
                            pruned = True
                            kill(process)
                return others.wait(process.wait()), pruned, others.reason_paths()
            except BaseException:  # the runner cannot follow it (a full disk, say): the job's processes end too
                others.end(process)
                raise
            finally:
                process.stdout.close()

    def _start_process(self, name: str, paths: jobs.JobPaths, env: Mapping[str, str], cold: bool = False):
        """The toolkit forked from the warm interpreter (torch already imported), else in a fresh one
        (``cold``: a torchrun job, whose launcher the warm interpreter does not fork)."""
        if self.warm is not None and not cold:
            try:
                return self.warm.start(["train"], paths.root, env)
            except WarmInterpreterError as exc:
                log.warning("job %s starts cold: %s", name, exc)
        return jobs.start(paths, env)

    def _upload_outputs(self, name: str, paths: jobs.JobPaths, record: Mapping[str, Any]) -> str:
        """``model.tar.gz`` and ``output.tar.gz`` where SageMaker puts them; the final job's reports where
        train.py uploads them on SageMaker (``runs/<run-id>/reports/``). Returns the model's URI."""
        prefix = record["OutputDataConfig"]["S3OutputPath"].rstrip("/") + f"/{name}/output"
        jobs.package_dir(paths.model, self.bucket.path_of_uri(f"{prefix}/model.tar.gz"))
        jobs.package_dir(paths.output_data, self.bucket.path_of_uri(f"{prefix}/output.tar.gz"))
        reports, target = paths.output_data / "reports", record["HyperParameters"].get("reports-uri")
        if target and reports.is_dir():
            for path in sorted(reports.iterdir()):
                self.bucket.put_file(
                    self.bucket.key_of(self.bucket.path_of_uri(f"{target.rstrip('/')}/{path.name}")), path
                )
        return f"{prefix}/model.tar.gz"

    def end(self, name: str, status: str, **changes: Any) -> str:
        """``finish`` with what SageMaker bills, the job's running time (locally, this machine's);
        returns ``status``."""
        started = (self.store.get("training-job", name) or {}).get("TrainingStartTime")
        if started:
            seconds = max(1, round((datetime.fromisoformat(now()) - datetime.fromisoformat(started)).total_seconds()))
            changes.update(TrainingTimeInSeconds=seconds, BillableTimeInSeconds=seconds)
        self.finish(name, status, **changes)
        return status

    def detail(self, name: str, record: Mapping[str, Any]) -> dict[str, Any]:
        detail = {
            k: record[k]
            for k in (
                "TrainingJobName",
                "TrainingJobArn",
                "TrainingJobStatus",
                "SecondaryStatus",
                "HyperParameters",
                "OutputDataConfig",
            )
            if k in record
        }
        detail["Tags"] = record.get("Tags", {})
        for key in ("ModelArtifacts", "FailureReason", "TuningJobArn"):
            if key in record:
                detail[key] = record[key]
        return detail
