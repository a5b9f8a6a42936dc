"""The local runtime: bucket, SageMaker, endpoints, event bus, notifications and the REST API on
one machine, driving the same Chalice handlers and ``chalice_app`` code as Lambda.

It builds its own Chalice app from its own environment and its own adapters
(``chalice_app.application.create_app(env, services)``) and routes its event bus by that app's patterns; the process's
environment is left alone, and another runtime in the same process never sees these services.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from chalice.config import Config as ChaliceConfig

from chalice_app import config as config_module
from chalice_app import names, observability
from chalice_app.adapters.errors import AdapterError
from chalice_app.adapters.pricing import BundledPrices
from chalice_app.application import create_app
from chalice_app.names import ARCHIVE_SUFFIXES
from chalice_app.notifications import Notifier
from chalice_app.pipeline import Services
from droptrain import sourcedir
from droptrain.local.aws import api
from droptrain.local.aws.alarms import LocalAlarms
from droptrain.local.aws.bucket import LocalBucket, etag
from droptrain.local.aws.bus import LocalEventBus, routes_of
from droptrain.local.aws.notify import LocalPublisher, read
from droptrain.local.engines import haproxy, privates
from droptrain.local.engines.serving import RayServe
from droptrain.local.engines.warm import WarmInterpreter
from droptrain.local.lock import HomeLock
from droptrain.local.sagemaker import LocalSageMaker
from droptrain.local.sagemaker.endpoint import LocalEndpoints, LocalRuntimeClient
from droptrain.local.sagemaker.resources import ACCOUNT
from droptrain.local.stage import BUCKET, local_environment, object_created
from droptrain.local.store import Store
from droptrain.upload import upload_dataset

log = logging.getLogger(__name__)
SCHEDULE_SECONDS = 3600  # the app's schedules are hourly
WATCH_SHARE = 10  # the watcher waits at least this many times as long as its last round took


class LocalRuntimeError(Exception):
    pass


class LocalRuntime:
    def __init__(
        self,
        home: Path = Path(".droptrain"),
        env: dict[str, str] | None = None,
        say: Callable[[str], None] = print,
        webhook: str | None = None,
        source_dir: Path | None = None,
        on_line: Callable[[str, str], None] | None = None,
        poll_seconds: float = 0.5,
        serving: RayServe | None = None,
        warm: WarmInterpreter | None = None,
    ):
        self.home = home.resolve()
        # The training code goes into the local bucket as SageMaker's source dir, where the jobs'
        # toolkit reads it (requirements.txt left out: .venv is the local image, see sourcedir.build).
        self._sourcedir, key = sourcedir.build(source_dir or sourcedir.TRAINING_DIR, include_requirements=False)
        self.env = local_environment({"SOURCE_DIR_S3_URI": f"s3://{BUCKET}/{key}", **(env or {})})
        self.say = say
        self.poll_seconds = poll_seconds
        self.bucket = LocalBucket(self.home / "bucket", BUCKET, on_skip=self._skipping)
        self.store = Store(self.home / "state.db", reserve=True)
        self.publisher = LocalPublisher(
            self.home / "notifications.jsonl", say, webhook, topic_arn=self.env["NOTIFY_TOPIC_ARN"]
        )
        self.bus: LocalEventBus | None = None
        # One Ray instance per runtime, unless the caller shares one (the tests do).
        self._owns_serving = serving is None
        self.serving = serving or RayServe(haproxy_dir=self.home / "haproxy")
        self.alarms = LocalAlarms(self.store)
        self.endpoints = LocalEndpoints(
            self.store, self.bucket, self.home / "endpoints", self._emit, self.serving, self.alarms
        )
        self.alarms.count_invocations = self.endpoints.invocations
        self.sagemaker = LocalSageMaker(
            self.store,
            self.bucket,
            self.home / "jobs",
            self._emit,
            self.endpoints,
            on_line or (lambda job, line: None),
            feature_cache=self.home / "cache" / "features",
            warm=warm,  # one the caller shares (the tests do), else the runtime's own
        )
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._server = None
        self._server_thread: threading.Thread | None = None
        self._watcher_error: str | None = None
        self._skipped: dict[str, str] = {}
        self._services: Services | None = None
        self._schedules: dict[str, Callable] = {}
        self._last_tick = time.monotonic()
        self._lock = HomeLock(self.home)
        self.api_url: str | None = None

    # -- what bootstrap asks for --------------------------------------------------------------

    def services(self, config: config_module.Config) -> Services:
        return Services(
            config=config,
            s3=self.bucket,
            sagemaker=self.sagemaker,
            runtime=LocalRuntimeClient(self.endpoints),
            alarms=self.alarms,
            prices=BundledPrices(),
            notifier=Notifier(self.publisher, self.bucket, config.notify_topic_arn, config.data_bucket),
            sleep=time.sleep,
            problems=self.problems,
        )

    def _emit(self, event: dict) -> None:
        if self.bus is not None:
            self.bus.put(event)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(
        self,
        serve_api: bool = True,
        host: str = "127.0.0.1",
        port: int = 8000,
        watch: bool = True,
        api_key: str | None = None,
    ) -> LocalRuntime:
        """Take the home folder, bind the API, then run: a second stack on this home, or a port in use,
        is refused (``HomeBusyError``, ``OSError``) before any job or event has run."""
        # The same Chalice app that Lambda runs, built for this runtime's environment: its
        # EventBridge patterns name the local bucket, and the bus routes by them.
        privates.check("sagemaker-training")  # before anything is taken: the jobs run through its private API
        self._lock.acquire()
        try:
            for line in self.store.quarantine():  # a torn record never stops the stack
                log.warning("%s", line)
                self.say(line)
            self._services = self.services(config_module.load(self.env))
            app_obj = create_app(self.env, self._services)
            if serve_api:
                self._bind(app_obj, host, port, api_key)
            self._run(app_obj, watch)
        except BaseException:
            self.stop()
            raise
        return self

    def _run(self, app_obj: Any, watch: bool) -> None:
        # Lambda's logs, metrics and traces have nowhere to go here: warnings only, on the console.
        observability.configure(level="WARNING", metrics_enabled=False)
        self.bucket.put(self.env["SOURCE_DIR_S3_URI"].removeprefix(f"s3://{BUCKET}/"), self._sourcedir)
        haproxy.end_leftovers(self.home / "haproxy")  # a killed stack's: this one holds the home's lock
        if self._owns_serving:
            self.serving.start()
        self.bus = LocalEventBus(routes_of(app_obj))
        self._schedules = schedules_of(app_obj)
        self._last_tick = time.monotonic()
        self.bus.start()
        self._stop.clear()
        self.endpoints.start()
        self.sagemaker.start()
        if watch:
            self._watcher = threading.Thread(target=self._watch, daemon=True, name="bucket-watcher")
            self._watcher.start()
        if self._server is not None:
            self._server_thread = threading.Thread(target=self._server.server.serve_forever, daemon=True, name="api")
            self._server_thread.start()

    def stop(self) -> None:
        """Stop cleanly: no new events, jobs ended (they resume on the next start), state saved."""
        self._stop.set()
        if self._watcher:
            self._watcher.join(10)
        if self._server is not None:
            if self._server_thread is not None:
                self._server.shutdown()
            self._server.server.server_close()
            self._server = self._server_thread = None
        self.sagemaker.stop()
        if self.bus:
            self.bus.stop()
        self.publisher.flush()
        self.endpoints.join(5)
        self.endpoints.close()
        if self._owns_serving:
            self.serving.stop()
            haproxy.end_leftovers(self.home / "haproxy")  # one a stop during Ray's start left behind
        self._services = None
        self._lock.release()

    def _bind(self, app_obj: Any, host: str, port: int, api_key: str | None) -> None:
        config = ChaliceConfig.create(
            chalice_stage="local",
            app_name="droptrain",
            project_dir=str(Path.cwd()),
            environment_variables=self.env,
            lambda_timeout=60,
        )
        self._server = api.create_server(app_obj, config, host, port, api_key=api_key)
        self.api_url = f"http://{host}:{self._server.server.server_address[1]}"

    def problems(self) -> list[str]:
        """What is broken in the stack itself (``GET /status`` answers 503 while there is any)."""
        if self._watcher is not None and not self._watcher.is_alive() and not self._stop.is_set():
            return [f"the bucket watcher stopped: {self._watcher_error or 'unknown cause'}; restart droptrain up"]
        return []

    # -- the bucket's "Object Created" events --------------------------------------------------

    def _watch(self) -> None:
        prefix = self.env["DATASET_PREFIX"]
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                self.scan(prefix)
                self.honour_stop_requests()
                busy = time.monotonic() - started
                if time.monotonic() - self._last_tick >= SCHEDULE_SECONDS:
                    self._last_tick = time.monotonic()
                    self.run_schedules()
                # A listing stats every file of the dataset folders: where they hold many, the watcher
                # waits ten times as long as its round took, so that it never takes more than a tenth of a core.
                self._stop.wait(max(self.poll_seconds, WATCH_SHARE * busy))
        except BaseException as exc:  # recorded for /status before the thread ends; not swallowed
            self._watcher_error = f"{type(exc).__name__}: {exc}"
            log.error("the bucket watcher stopped: %s", self._watcher_error)
            raise

    def scan(self, prefix: str | None = None) -> int:
        """Emit "Object Created" for every object under the prefix not seen before (with this ETag),
        including those written while the runtime was down. Returns how many. An object that cannot
        be read (gone mid-scan, unreadable) is logged and skipped: it never stops the scan."""
        emitted = 0
        for key, size in self.bucket.list_objects(BUCKET, prefix or self.env["DATASET_PREFIX"]):
            if not (key.endswith("/_READY") or key.lower().endswith(ARCHIVE_SUFFIXES)):
                continue  # only what could start a run; EventBridge would drop the rest anyway
            try:
                emitted += self._notice(key, size)
            except (OSError, AdapterError) as exc:
                if self._skipped.get(key) != str(exc):  # once per object and cause, not every poll
                    self._skipped[key] = str(exc)
                    self._skipping(key, str(exc))
        return emitted

    def _skipping(self, key: str, why: str) -> None:
        log.warning("skipping %s in the local bucket: %s", key, why)
        self.say(f"skipping {key}: {why}")

    def _notice(self, key: str, size: int) -> int:
        path = self.bucket.path(key)
        stat = path.stat()
        seen = self.store.get("object", key)
        if seen and seen.get("mtime_ns") == stat.st_mtime_ns and seen.get("size") == size:
            return 0
        tag = etag(path)
        if seen and seen.get("etag") == tag:
            self.store.update("object", key, mtime_ns=stat.st_mtime_ns, size=size)
            return 0
        record = {"etag": tag, "mtime_ns": stat.st_mtime_ns, "size": size}
        if not self.store.insert("object", key, record):
            self.store.update("object", key, **record)
        self._emit(object_created(key, size, tag))
        self._skipped.pop(key, None)
        return 1

    def honour_stop_requests(self) -> list[str]:
        """``droptrain stop RUN`` (another process) leaves a request in the store: the run's jobs in
        progress are stopped as SageMaker stops them (their state-change events follow)."""
        done = []
        for run in self.store.names("stop-request"):
            if self.store.status("tuning-job", run) == "InProgress":
                self.sagemaker.stop_tuning_job(run)
            if self.store.status("training-job", names.final_job_name(run)) == "InProgress":
                self.sagemaker.training.stop(names.final_job_name(run))
            if self.store.status("processing-job", names.audit_job_name(run)) == "InProgress":
                self.sagemaker.processing.stop(names.audit_job_name(run))
            self.store.delete("stop-request", run)
            self.say(f"stopping {run}, as asked")
            done.append(run)
        return done

    def run_schedules(self, now: datetime | None = None) -> dict[str, Any]:
        """EventBridge's scheduled events, as the app's ``@app.schedule`` functions receive them (hourly
        while the stack runs; tests call it with the time they need)."""
        moment = (now or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "account": ACCOUNT,
            "time": moment,
            "region": "local",
            "resources": [],
            "detail": {},
        }
        return {name: handler(event, None) for name, handler in self._schedules.items()}

    # -- uploads -------------------------------------------------------------------------------

    def upload(self, source: Path, name: str) -> str:
        return upload_to_bucket(self.bucket, source, name, self.env["DATASET_PREFIX"])

    def notifications(self) -> list[dict]:
        return read(self.publisher.path)


def schedules_of(app: Any) -> dict[str, Callable]:
    """The app's scheduled functions (what ``chalice package`` turns into schedule rules)."""
    return {
        source.name: app.handler_map[source.name]
        for source in app.event_sources
        if getattr(source, "schedule_expression", None) is not None
    }


def upload_to_bucket(bucket: LocalBucket, source: Path, name: str, prefix: str = "datasets/") -> str:
    """A dataset folder (files first, then a fresh ``_READY`` marker) or one archive; returns the key
    that starts the run."""
    return upload_dataset(source, name, bucket.put_file, bucket.put, prefix)


def reset(home: Path) -> None:
    """Forget every run (the demo starts from a clean slate): with the home's lock held, so that the
    home of a running stack is refused (``HomeBusyError``) before anything in it is touched."""
    lock = HomeLock(home).acquire()
    try:
        for child in home.iterdir():
            if child == lock.path:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    finally:
        lock.release()
