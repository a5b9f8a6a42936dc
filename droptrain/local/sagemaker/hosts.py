"""A training job's instances on this machine: one host each, run as SageMaker runs a cluster.

SageMaker gives every instance of a job the same ``/opt/ml`` layout and a ``resourceconfig.json``
naming all the hosts (the first is the master) and the current one, then starts the container on
each. With ``sagemaker_torch_distributed_enabled`` the PyTorch container's own entry
(``sagemaker_pytorch_container.training``, its ``SAGEMAKER_TRAINING_MODULE``) has AWS's toolkit start
``torchrun --nnodes <hosts> --nproc_per_node <GPUs or 1> --master_addr <first host> --master_port 7777
--node_rank <i>``. Here that same code runs once per host. This machine cannot resolve SageMaker's
``algo-N`` names, so the hosts of a distributed job are named by loopback addresses of a block of
their own (all of 127.0.0.0/8 is this machine; the toolkit's port is fixed, the block is not); gloo
talks over the loopback interface. The first host's ``/opt/ml`` is the job's folder, the others' are
under ``hosts/<address>/``. The first host to fail ends all the others (SageMaker ends a job when one
of its instances fails), and the job fails with the reason that host wrote first.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from droptrain.local.sagemaker import jobs
from droptrain.local.sagemaker.lifecycle import kill

LAUNCHER = "sagemaker_torch_distributed_enabled"
ENTRY = "sagemaker_pytorch_container.training:main"  # the PyTorch training containers' SAGEMAKER_TRAINING_MODULE
MASTER_PORT = 7777  # sagemaker_training/torch_distributed.py's, fixed


def distributed(hyperparameters: Mapping[str, Any]) -> bool:
    """Whether the job asks for the container's torchrun launcher (the SDK JSON-encodes the value)."""
    return str(hyperparameters.get(LAUNCHER, "")).strip().strip('"').lower() == "true"


def _port_free(address: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((address, MASTER_PORT))
            return True
        except OSError:
            return False


def loopback_hosts(count: int, job: str) -> list[str]:
    """``count`` addresses ``127.a.b.1`` ... of a block whose master port is free (jobs running at once,
    in one runtime or several, each take their own)."""
    seed = zlib.crc32(f"{job}:{os.getpid()}".encode())
    for attempt in range(512):
        block = (seed + attempt * 7919) % (254 * 254)
        base = f"127.{1 + block // 254}.{1 + block % 254}"
        if _port_free(f"{base}.1"):
            return [f"{base}.{number}" for number in range(1, count + 1)]
    raise jobs.JobSetupError(f"no loopback block has port {MASTER_PORT} free for the job's hosts")


@dataclass(frozen=True)
class Cluster:
    """The hosts of one attempt of a job: their names (the first the master) and ``/opt/ml`` folders."""

    names: list[str]
    paths: list[jobs.JobPaths]
    distributed: bool = False

    @classmethod
    def of(cls, job: str, root: jobs.JobPaths, record: Mapping[str, Any]) -> Cluster:
        count = int(record["ResourceConfig"].get("InstanceCount") or 1)
        launched = distributed(record.get("HyperParameters", {}))
        if count == 1 and not launched:
            return cls([jobs.HOST], [root])
        names = loopback_hosts(count, job)
        return cls(names, [root] + [jobs.JobPaths(root.root / "hosts" / n) for n in names[1:]], launched)

    def environment(self) -> dict[str, str]:
        """What every host's container has besides the job's environment."""
        if not self.distributed:
            return {}
        return {
            "SAGEMAKER_TRAINING_MODULE": ENTRY,
            # The toolkit runs "torchrun" from PATH, as the image has it; here, beside this interpreter.
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            "GLOO_SOCKET_IFNAME": "lo",
            # One host: the toolkit passes no master address, torchrun reads these (its PET_ variables).
            "PET_MASTER_ADDR": self.names[0],
            "PET_MASTER_PORT": str(MASTER_PORT),
        }


@dataclass
class Others:
    """The hosts after the first, each its toolkit in a process group of its own. Their lines go to
    ``on_line`` marked with the host; the first to fail ends the master and the rest."""

    cluster: Cluster
    on_line: Callable[[str], None]
    processes: list[subprocess.Popen] = field(default_factory=list)
    failed: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self, envs: list[Mapping[str, str]], master: subprocess.Popen) -> None:
        for name, paths, env in zip(self.cluster.names[1:], self.cluster.paths[1:], envs):
            process = jobs.start(paths, env)
            jobs.record_runner(paths, process)
            self.processes.append(process)
            thread = threading.Thread(target=self._follow, args=(name, process, master), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _follow(self, name: str, process: subprocess.Popen, master: subprocess.Popen) -> None:
        assert process.stdout is not None
        with process.stdout:
            for line in process.stdout:
                self.on_line(f"[{name}] {line.rstrip()}")
        if process.wait() != 0 and not self.failed.is_set():
            self.failed.set()
            self.end(master)

    def end(self, master: subprocess.Popen | None = None) -> None:
        for process in [*self.processes, *([master] if master else [])]:
            kill(process)

    def wait(self, master_status: int) -> int:
        """After the master ended: the others end too (at once if it failed); the job's exit status."""
        if master_status != 0:
            self.end()
        for thread in self._threads:
            thread.join()
        statuses = [master_status, *(p.wait() for p in self.processes)]
        return next((status for status in statuses if status != 0), 0)

    def reason_paths(self) -> jobs.JobPaths:
        """The host whose failure file was written first (the failing rank's own reason, not the
        broken-connection errors it caused on the others); the master's when none was."""
        written = [p for p in self.cluster.paths if p.failure.exists()]
        return min(written, key=lambda p: p.failure.stat().st_mtime_ns) if written else self.cluster.paths[0]


ON_CPU = -1  # a host that must not use the machine's GPUs


class Machine:
    """This machine's GPUs and cores, shared by the jobs that run at once: one GPU per host where there
    are GPUs; else, with several hosts or jobs, an equal part of the cores (OpenMP threads: two
    processes each using every core would slow each other down)."""

    def __init__(self, gpus: int):
        self.gpus = gpus
        self._in_use: set[int] = set()
        self._lock = threading.Lock()

    def take(self, hosts: int) -> list[int | None]:
        """A GPU for each host; ``None`` where there is none to spare (a one-host job then shares what the
        driver gives it). A job of several hosts that cannot have a GPU each runs them all on the CPU
        (``ON_CPU``): NCCL refuses two ranks on one GPU, and a gloo rank cannot meet an NCCL one."""
        with self._lock:
            free = sorted(set(range(self.gpus)) - self._in_use)
            if hosts > 1 and self.gpus and len(free) < hosts:
                return [ON_CPU] * hosts
            taken = free[:hosts]
            self._in_use.update(taken)
            return [*taken, *[None] * (hosts - len(taken))]

    def give_back(self, taken: list[int | None]) -> None:
        with self._lock:
            self._in_use.difference_update(t for t in taken if t is not None)

    def part(self, share: int, gpu: int | None) -> dict[str, str]:
        """The environment that gives one process its part: its GPU, or its threads."""
        if gpu is not None and gpu != ON_CPU:  # the n-th of the GPUs this runtime may use
            visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
            return {"CUDA_VISIBLE_DEVICES": visible[gpu] if gpu < len(visible) else str(gpu)}
        out = {"CUDA_VISIBLE_DEVICES": ""} if gpu == ON_CPU else {}
        if share > 1 and (not self.gpus or gpu == ON_CPU):
            out["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // share))
        return out
