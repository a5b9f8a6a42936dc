"""SageMaker's data capture, locally: what an endpoint config's ``DataCaptureConfig`` asks for, written as
SageMaker writes it (``chalice_app.capture``): a random ``InitialSamplingPercentage`` of the requests,
each with its answer, under ``<DestinationS3Uri>/<endpoint>/<variant>/yyyy/mm/dd/hh/`` of the local bucket.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from datetime import datetime, timezone

from chalice_app import capture
from chalice_app.adapters.errors import AdapterError
from droptrain.local.aws.bucket import LocalBucket
from droptrain.local.store import Store

log = logging.getLogger(__name__)


class LocalCapture:
    def __init__(self, store: Store, bucket: LocalBucket, draw: Callable[[], float] = random.random):
        self.store, self.bucket, self.draw = store, bucket, draw

    def after(self, endpoint: str, config_name: str, body: bytes, content_type: str, answer: bytes) -> str | None:
        """Keep this request and its answer if the config captures and the draw says so; the key written."""
        config = self.store.get("endpoint-config", config_name) or {}
        wanted = config.get("DataCaptureConfig") or {}
        if not wanted.get("EnableCapture", True) or self.draw() * 100 >= wanted.get("InitialSamplingPercentage", 0):
            return None
        bucket, _, prefix = wanted["DestinationS3Uri"].removeprefix("s3://").partition("/")
        if bucket != self.bucket.name:
            log.warning("endpoint %s captures to another bucket (%s): not kept locally", endpoint, bucket)
            return None
        variant = config["ProductionVariants"][0].get("VariantName", capture.VARIANT)
        when = datetime.now(timezone.utc)
        line = capture.record(body, content_type, answer, when)
        key = capture.key(prefix, endpoint, variant, when, line["eventMetadata"]["eventId"])
        try:
            self.bucket.put(key, (capture.json_line(line)).encode())
        except (OSError, AdapterError) as exc:  # SageMaker drops captures it cannot write; the answer stands
            log.warning("capturing a request of %s failed: %s", endpoint, exc)
            return None
        return key
