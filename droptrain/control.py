"""``droptrain runs``, ``droptrain logs`` and ``droptrain stop``: the local stack's runs, read from its
store and job folders (no server needed), and a stop asked of the running stack.

A stop is a request in the state database: the running stack honours it within a poll (its bucket
watcher's loop), with StopHyperParameterTuningJob / StopTrainingJob's semantics and events; a stack
that is not running honours it when it next starts, before resuming anything.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from chalice_app import names
from droptrain.local.store import Store, StoreWriteError


class ControlError(Exception):
    """What was asked names nothing in this home folder."""


def _store(home: Path):

    db = home / "state.db"
    if not db.exists():
        raise ControlError(f"no local runs yet ({db} does not exist): droptrain up, then droptrain upload PATH")
    try:
        return Store(db)
    except StoreWriteError as exc:  # a full disk: said in one line, as every other refusal here
        raise ControlError(str(exc)) from exc


def runs(home: Path) -> list[str]:
    """One line per run: its tuning job's state, its final job's, the dataset."""
    store = _store(home)
    try:
        lines = []
        for name, status, record in store.records("tuning-job"):
            final = store.status("training-job", names.final_job_name(name)) or "-"
            audit = store.status("processing-job", names.audit_job_name(name)) or "-"
            lines.append(
                f"{name:<30} tuning {status:<10} final {final:<10} audit {audit:<10} "
                f"{names.dataset_of_tags(record.get('Tags', {})) or ''}"
            )
        for name, status, _record in store.records("processing-job"):
            run = name.removesuffix(names.AUDIT_JOB_SUFFIX)
            if name.endswith(names.AUDIT_JOB_SUFFIX) and store.get("tuning-job", run) is None:  # not drift checks
                lines.append(f"{run:<30} audit {status:<10} (no tuning job)")
        return lines
    finally:
        store.close()


def job_logs(home: Path, name: str) -> list[Path]:
    """The logs of a job, or of every job of a run (its audit, trials and final job, in that order)."""
    root = home / "jobs"
    if (root / name / "job.log").is_file():
        return [root / name / "job.log"]
    found = sorted(p / "job.log" for p in root.glob(f"{name}-*") if (p / "job.log").is_file()) if root.is_dir() else []
    found.sort(key=lambda p: (not p.parent.name.endswith("-audit"), p.parent.name.endswith("-final"), p.parent.name))
    if not found:
        raise ControlError(f"no job or run {name!r} has a log in {root}")
    return found


def follow(
    path: Path, sleep: Callable[[float], None] = time.sleep, stop: Callable[[], bool] = lambda: False
) -> Iterator[str]:
    """The file's lines, then every line appended to it, until ``stop()`` (Ctrl-C for the command)."""
    with open(path, errors="replace") as handle:
        while True:
            line = handle.readline()
            if line:
                yield line.rstrip("\n")
            elif stop():
                return
            else:
                sleep(0.5)


def ask_stop(home: Path, run: str) -> str:
    """Record a stop request for ``run``; the running stack (or the next one) carries it out."""
    store = _store(home)
    try:
        if store.get("tuning-job", run) is None and store.get("processing-job", names.audit_job_name(run)) is None:
            raise ControlError(f"there is no run {run!r} in {home}")
        try:
            store.insert("stop-request", run, {"run": run})
        except StoreWriteError as exc:
            raise ControlError(f"the stop request could not be recorded: {exc}") from exc
        return (
            f"asked the stack to stop {run}: its jobs end as SageMaker's stopped jobs do "
            "(a stopped stack does it when it next starts)"
        )
    finally:
        store.close()


# -- the commands ------------------------------------------------------------------------------


def _cmd_runs(args: argparse.Namespace) -> int:
    try:
        print("\n".join(runs(args.home)) or "no runs yet")
    except ControlError as exc:
        print(f"droptrain runs: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_logs(args: argparse.Namespace) -> int:
    try:
        paths = job_logs(args.home, args.name)
    except ControlError as exc:
        print(f"droptrain logs: {exc}", file=sys.stderr)
        return 1
    try:
        for path in paths[:-1] if args.follow else paths:
            print(f"==> {path.parent.name} <==\n{path.read_text(errors='replace')}", end="", flush=True)
        if args.follow:
            print(f"==> {paths[-1].parent.name} <==", flush=True)
            for line in follow(paths[-1]):
                print(line, flush=True)
    except KeyboardInterrupt:
        pass
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    try:
        print(ask_stop(args.home, args.run))
    except ControlError as exc:
        print(f"droptrain stop: {exc}", file=sys.stderr)
        return 1
    return 0


def control_commands(sub: Any) -> None:
    """Runs, their logs, and stopping one: what the local stack's home folder holds."""
    p = sub.add_parser("runs", help="the local stack's runs: tuning, final and audit jobs' states, datasets")
    p.add_argument("--home", type=Path, default=Path(".droptrain"), help="the local stack's state")
    p.set_defaults(func=_cmd_runs)
    p = sub.add_parser("logs", help="a job's log, or every job's of a run")
    p.add_argument("name", help="a job name, or a run id")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing what the (last) job writes, until Ctrl-C")
    p.add_argument("--home", type=Path, default=Path(".droptrain"), help="the local stack's state")
    p.set_defaults(func=_cmd_logs)
    p = sub.add_parser("stop", help="stop a run's jobs (as StopHyperParameterTuningJob and StopTrainingJob do)")
    p.add_argument("run", help="the run id")
    p.add_argument("--home", type=Path, default=Path(".droptrain"), help="the local stack's state")
    p.set_defaults(func=_cmd_stop)
