"""Closed-loop HTTP clients for the serving benchmark: N threads POST one image to a URL (the local
API's /predict, or a Ray Serve application's route) for a while; prints requests/s, latency
percentiles and errors as JSON. Each client keeps its connection, as an HTTP client with a session
does; with ``new`` as the fifth argument it opens one for every request.

Run as its own process, so that the clients' work is not counted inside the server's process."""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit


def main(url: str, image: Path, concurrency: int, seconds: float, reuse: bool = True) -> dict:
    body = image.read_bytes()
    target = urlsplit(url)
    path = target.path + (f"?{target.query}" if target.query else "")
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    start = threading.Barrier(concurrency + 1)
    stop_at = [0.0]

    def client():
        start.wait()
        connection = None
        while time.perf_counter() < stop_at[0]:
            began = time.perf_counter()
            connection = connection or http.client.HTTPConnection(target.hostname, target.port, timeout=60)
            try:
                connection.request("POST", path, body=body, headers={"Content-Type": "image/jpeg"})
                response = connection.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
            if not (ok and reuse) or response.will_close:
                connection.close()
                connection = None
            with lock:
                if ok:
                    latencies.append(time.perf_counter() - began)
                else:
                    errors[0] += 1

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    warmup_end = time.perf_counter() + 2.0
    stop_at[0] = warmup_end + seconds
    start.wait()
    time.sleep(2.0)  # warm-up: the first batches are not counted
    with lock:
        latencies.clear()
        errors[0] = 0
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    ordered = sorted(latencies)
    return {
        "rps": len(ordered) / elapsed,
        "requests": len(ordered),
        "errors": errors[0],
        "p50_ms": ordered[len(ordered) // 2] * 1e3 if ordered else float("nan"),
        "p99_ms": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))] * 1e3 if ordered else float("nan"),
    }


if __name__ == "__main__":
    print(
        json.dumps(main(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5:6] != ["new"]))
    )
