"""The warm interpreter runs a job exactly as a fresh one does: AWS's toolkit, then the script with the
same arguments, environment, folder, sys.path and exit status; a stop ends the whole job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from droptrain.local.engines.warm import WarmInterpreter, WarmInterpreterError
from droptrain.local.sagemaker import jobs
from helpers import DEADLINE

PROBE = """
import json, logging, os, sys, time
print("probe " + json.dumps({
    "argv": sys.argv, "cwd": os.getcwd(), "path0": sys.path[0], "main": __name__,
    "channel": os.environ.get("SM_CHANNEL_TRAINING"), "lr": os.environ.get("SM_HP_LR"),
    "job": os.environ.get("TRAINING_JOB_NAME"), "root_handlers": len(logging.getLogger().handlers),
    "session_leader": os.getpgid(0) != os.getpid(),
}), flush=True)
print("to stderr", file=sys.stderr, flush=True)
if os.environ.get("PROBE_SLEEP"):
    # Written then renamed, so a reader never sees the file empty.
    open(os.environ["PROBE_PID"] + ".tmp", "w").write(str(os.getpid()))
    os.replace(os.environ["PROBE_PID"] + ".tmp", os.environ["PROBE_PID"])
    time.sleep(float(os.environ["PROBE_SLEEP"]))
if os.environ.get("PROBE_FAIL"):
    raise ValueError("the probe fails as asked")
sys.exit(int(os.environ.get("PROBE_EXIT", "0")))
"""


@pytest.fixture(scope="module")
def warm(shared_warm):
    """The session's warm interpreter (each start imports torch again); the lifecycle tests start their own."""
    return shared_warm


def _job(root: Path, name: str) -> jobs.JobPaths:
    source = root / "source"
    source.mkdir(parents=True)
    (source / "train.py").write_text(PROBE)
    with tarfile.open(root / "sourcedir.tar.gz", "w:gz") as tar:
        tar.add(source / "train.py", "train.py")
    (root / "data").mkdir()
    (root / "data" / "a.txt").write_text("x")
    paths = jobs.JobPaths(root / name)
    channel = [
        {"ChannelName": "training", "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://b/d/"}}}
    ]
    jobs.write_config(
        paths,
        {
            "lr": "0.01",
            "epochs": "2",
            "sagemaker_program": "train.py",
            "sagemaker_submit_directory": str(root / "sourcedir.tar.gz"),
        },
        channel,
        "ml.m5.large",
    )
    jobs.stage_channel(paths, "training", root / "data")
    return paths


def _run(process) -> tuple[int, list[str]]:
    lines = [line.rstrip("\n") for line in process.stdout]
    process.stdout.close()
    return process.wait(), lines


def _probe(lines: list[str]) -> dict:
    found = json.loads(next(line for line in lines if line.startswith("probe ")).removeprefix("probe "))
    return found


@pytest.mark.parametrize("extra,status", [({}, 0), ({"PROBE_EXIT": "3"}, 3), ({"PROBE_FAIL": "1"}, 1)])
def test_a_job_runs_in_the_warm_interpreter_as_in_a_fresh_one(tmp_path, warm, extra, status):
    results = {}
    for mode in ("cold", "warm"):
        paths = _job(tmp_path / mode, "probe-job")
        env = jobs.toolkit_env(paths, "probe-job", "arn:aws:sagemaker:local:0:training-job/probe-job", extra)
        process = jobs.start(paths, env) if mode == "cold" else warm.start(["train"], paths.root, env)
        results[mode] = (*_run(process), paths)
    assert results["cold"][0] == results["warm"][0], "the toolkit's own exit status"
    for mode, (code, lines, paths) in results.items():
        assert (code == 0) == (status == 0), f"{mode}\n" + "\n".join(lines[-20:])
        probe = _probe(lines)
        assert probe["argv"] == ["train.py", "--epochs", "2", "--lr", "0.01"]
        assert probe["cwd"] == probe["path0"] == str(paths.root / "code") and probe["main"] == "__main__"
        assert (
            probe["channel"] == str(paths.input_data / "training")
            and probe["lr"] == "0.01"
            and probe["job"] == "probe-job"
        )
        assert probe["root_handlers"] == 0, "logging as a fresh interpreter has it"
        assert "to stderr" in lines
        assert (paths.output / "success").exists() == (status == 0)
        if status:
            assert paths.failure.exists()
            assert (f"ExitCode {status}" in paths.failure.read_text()) or "ValueError" in paths.failure.read_text()
    assert _probe(results["cold"][1]) | {"cwd": "", "path0": "", "channel": ""} == _probe(results["warm"][1]) | {
        "cwd": "",
        "path0": "",
        "channel": "",
    }


@pytest.mark.parametrize("extra,status", [({}, 0), ({"PROBE_EXIT": "3"}, 3), ({"PROBE_FAIL": "1"}, 1)])
def test_a_script_alone_runs_in_the_warm_interpreter_as_python_runs_it(tmp_path, warm, extra, status):
    (tmp_path / "probe.py").write_text(PROBE)
    env = {**os.environ, "SM_HP_LR": "0.5", **extra}
    cold = subprocess.run(
        [sys.executable, "--", "probe.py", "--lr", "0.5"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    code, lines = _run(warm.start(["probe.py", "--lr", "0.5"], tmp_path, env, script=True))
    assert code == cold.returncode == status, "\n".join(lines[-20:])
    probe = _probe(lines)
    # As python runs it, except that the script is the job: it leads its own process group (a stop ends it).
    assert probe == _probe(cold.stdout.splitlines()) | {"session_leader": False}
    assert probe["argv"] == ["probe.py", "--lr", "0.5"] and probe["cwd"] == probe["path0"] == str(tmp_path)
    assert "to stderr" in lines and not (tmp_path / "output").exists(), "no toolkit around it"


def test_stopping_a_warm_job_ends_the_toolkit_and_the_script(tmp_path, warm):
    paths = _job(tmp_path, "probe-stop")
    env = jobs.toolkit_env(
        paths,
        "probe-stop",
        "arn:aws:sagemaker:local:0:training-job/probe-stop",
        {"PROBE_SLEEP": "60", "PROBE_PID": str(tmp_path / "script.pid")},
    )
    process = warm.start(["train"], paths.root, env)
    deadline = time.time() + DEADLINE
    while not (tmp_path / "script.pid").exists() and time.time() < deadline:
        time.sleep(0.05)
    script = int((tmp_path / "script.pid").read_text())
    assert os.getpgid(script) == process.pid, "the script runs in the job's own process group"
    import psutil

    assert "-- train.py" in " ".join(psutil.Process(script).cmdline()), "ps shows the script as if started cold"
    from droptrain.local.sagemaker.lifecycle import kill

    kill(process)
    code, _ = _run(process)
    assert code == -signal.SIGTERM
    with pytest.raises(ProcessLookupError):
        for _ in range(50):
            os.kill(script, 0)
            time.sleep(0.05)


def test_the_interpreter_ends_with_its_runtime_and_a_new_one_starts(tmp_path):
    interpreter = WarmInterpreter(tmp_path / "w")
    path = interpreter.start_server()
    assert Path(path).exists()
    server = interpreter._server
    interpreter.close()
    assert server.poll() is not None and not Path(path).exists()
    paths = _job(tmp_path / "again", "probe-again")
    process = interpreter.start(["train"], paths.root, jobs.toolkit_env(paths, "probe-again", "arn", {}))
    assert _run(process)[0] == 0, "a closed interpreter starts again on the next job"
    interpreter.close()


def test_two_threads_may_wait_for_one_job(tmp_path, warm):
    # The job's own thread waits for its status while a stop waits for it too (kill_all), as on a Popen.
    import threading

    paths = _job(tmp_path, "probe-waits")
    process = warm.start(
        ["train"],
        paths.root,
        jobs.toolkit_env(paths, "probe-waits", "arn", {"PROBE_SLEEP": "1", "PROBE_PID": str(tmp_path / "pid")}),
    )
    codes, errors = [], []

    def waiter():
        try:
            codes.append(process.wait())
        except Exception as exc:  # noqa: BLE001 - collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=waiter) for _ in range(3)]
    for thread in threads:
        thread.start()
    with pytest.raises(__import__("subprocess").TimeoutExpired):
        process.wait(0.05)
    _run(process)
    for thread in threads:
        thread.join(DEADLINE)
    assert errors == [] and codes == [0, 0, 0]


def test_closing_while_the_server_still_imports_ends_it_at_once(tmp_path, monkeypatch):
    """A stack stopped right after it started: the stop does not wait for the server to finish importing
    torch (it waited up to ``ready_seconds``, holding every stop of a test or of Ctrl-C for seconds)."""
    import sys
    import threading

    interpreter = WarmInterpreter(tmp_path / "w", ready_seconds=10 * DEADLINE)
    # A server that never says "ready", as one still importing.
    monkeypatch.setattr(interpreter, "command", lambda path: [sys.executable, "-c", "import time; time.sleep(3600)"])
    raised = []
    starting = threading.Thread(target=lambda: _record(raised, interpreter.start_server))
    starting.start()
    deadline = time.monotonic() + DEADLINE
    while interpreter._server is None and time.monotonic() < deadline:
        time.sleep(0.01)
    server = interpreter._server
    closing = threading.Thread(target=interpreter.close)
    closing.start()
    closing.join(DEADLINE)
    starting.join(DEADLINE)
    assert not closing.is_alive() and not starting.is_alive(), "close waited for a server that was never ready"
    server.wait(DEADLINE)
    assert server.returncode == -signal.SIGKILL, "killed, not left importing"
    assert len(raised) == 1 and isinstance(raised[0], WarmInterpreterError) and "did not start" in str(raised[0])


def _record(raised: list, call) -> None:
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - collected for the assertion
        raised.append(exc)
