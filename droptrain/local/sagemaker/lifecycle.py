"""One SageMaker job lifecycle, written once for training, processing and tuning jobs.

A job is created InProgress, described in boto3's shape with the store's own fields left out, asked
to stop (its process group ended if it runs), and ended once, whoever tries: Completed, Failed or
Stopped, with its end time and the state-change event SageMaker sends. Each kind of job says what
differs in a ``JobKind`` record and how its event's detail reads (``detail``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from chalice_app.adapters.errors import NotFoundError
from droptrain.local.sagemaker.resources import arn, as_described, now, state_change_event
from droptrain.local.store import Store

TERMINAL = ("Completed", "Failed", "Stopped")
Emit = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class JobKind:
    """What one kind of SageMaker job calls its fields, its ARN, its event and its absence."""

    store_kind: str  # the store's kind: "training-job"
    arn_kind: str  # the resource type in its ARN: "hyper-parameter-tuning-job"
    prefix: str  # its fields' prefix: "TrainingJob" (TrainingJobName, TrainingJobArn, TrainingJobStatus)
    end_field: str  # when it ended: "TrainingEndTime"
    detail_type: str  # its EventBridge event: "SageMaker Training Job State Change"
    hidden: tuple[str, ...]  # stored, never described: ("Tags",)
    missing: str  # the error for a name that is not there, with {name} and {arn}
    missing_code: str  # its error code

    def arn(self, name: str) -> str:
        return arn(self.arn_kind, name)

    @property
    def status_field(self) -> str:
        return f"{self.prefix}Status"


def kill(process: subprocess.Popen) -> None:
    """End a job's whole process group (the toolkit or entrypoint, and what it started)."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class Jobs:
    """The jobs of one kind: their records in the store, their running processes, their ends."""

    kind: JobKind

    def __init__(self, store: Store, emit: Emit):
        self.store, self.emit = store, emit
        self._processes: dict[str, subprocess.Popen] = {}
        self._stop_requested: set[str] = set()
        self._lock = threading.Lock()

    def insert(self, name: str, record: dict[str, Any]) -> bool:
        """Create the job InProgress; ``False`` if a job of that name exists (SageMaker's is an error;
        the pipeline takes it as "already created")."""
        record = {
            f"{self.kind.prefix}Name": name,
            f"{self.kind.prefix}Arn": self.kind.arn(name),
            self.kind.status_field: "InProgress",
            "CreationTime": now(),
            "LastModifiedTime": now(),
            **record,
        }
        return self.store.insert(self.kind.store_kind, name, record, status="InProgress")

    def record(self, name: str) -> dict[str, Any]:
        found = self.store.get(self.kind.store_kind, name)
        if found is None:
            raise NotFoundError(self.kind.missing.format(name=name, arn=self.kind.arn(name)), self.kind.missing_code)
        return found

    def describe(self, name: str) -> dict[str, Any]:
        return as_described(self.record(name), hidden=self.kind.hidden)

    def stop(self, name: str) -> None:
        """Stop…Job: the job ends Stopped (its process group is ended if it is running)."""
        with self._lock:
            self._stop_requested.add(name)
            process = self._processes.get(name)
        if process is not None:
            kill(process)

    def stop_requested(self, name: str) -> bool:
        with self._lock:
            return name in self._stop_requested

    def kill_all(self) -> None:
        with self._lock:
            processes = list(self._processes.values())
        for process in processes:
            kill(process)

    @contextmanager
    def running(self, name: str, process: subprocess.Popen) -> Iterator[subprocess.Popen]:
        """While the block runs, ``process`` is the job's: a stop or ``kill_all`` ends it."""
        with self._lock:
            self._processes[name] = process
        try:
            yield process
        finally:
            with self._lock:
                self._processes.pop(name, None)

    def finish(self, name: str, status: str, **changes: Any) -> bool:
        """Move the job out of InProgress and announce it; ``False`` if it had already ended."""
        changes.update({self.kind.status_field: status, self.kind.end_field: now(), "LastModifiedTime": now()})
        if not self.store.transition(self.kind.store_kind, name, ("InProgress",), status, **changes):
            return False
        record = self.store.get(self.kind.store_kind, name)
        self.emit(state_change_event(self.kind.detail_type, self.kind.arn_kind, name, self.detail(name, record)))
        return True

    def detail(self, name: str, record: Mapping[str, Any]) -> dict[str, Any]:
        """The state-change event's detail: the job's name, ARN and status, and its failure reason."""
        fields = (f"{self.kind.prefix}Name", f"{self.kind.prefix}Arn", self.kind.status_field)
        detail = {key: record[key] for key in fields}
        if "FailureReason" in record:
            detail["FailureReason"] = record["FailureReason"]
        return detail
