"""The embedded local runtime end to end: the same handlers, the real train.py, the API on loopback."""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import json
import os
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from droptrain import cli
from droptrain.api_client import call_api, post_image
from droptrain.local.runtime import LocalRuntime
from helpers import DEADLINE, browser

FAKE_SOURCE = Path(__file__).resolve().parent / "fake_source"
CHAIN = [
    "dataset.accepted",
    "dataset.audited",
    "tuning.started",
    "tuning.completed",
    "training.started",
    "training.completed",
    "model.registered",
    "model.approved",
    "deployment.started",
    "deployment.completed",
]


def wait_for(runtime: LocalRuntime, event: str, timeout: float = DEADLINE) -> list[str]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        seen = [n["message"]["event"] for n in runtime.notifications()]
        if event in seen:
            return seen
        if any(e.endswith(("failed", "rejected")) for e in seen):
            raise AssertionError(f"the pipeline failed: {runtime.notifications()[-1]['subject']}")
        time.sleep(0.3)
    raise AssertionError(f"no {event} in {timeout}s: {[n['message']['event'] for n in runtime.notifications()]}")


@pytest.fixture(scope="module")
def stack(tiny_dataset, tmp_path_factory, ray_serve, shared_warm):
    """One local stack for the module, after a real run of the pipeline on the tiny dataset (project
    ``pets``): the end-to-end test goes on from there, and the console's browser test reads it. Its
    final jobs run on two instances (two hosts, torchrun: what ``--set TRAINING_INSTANCE_COUNT=2`` gives
    every job; the trials stay on one, whose cold starts of two hosts each would double this module's time).
    Its jobs train an epoch or two: what is tested is the stack, not how well it learns."""
    env = {
        "MAX_TUNING_JOBS": "2",
        "TUNING_RANGES": '{"epochs": [1, 2]}',
        "FINAL_INSTANCE_COUNT": "2",
        "CAPTURE_PERCENT": "100",
        "STATIC_HYPERPARAMETERS": '{"arch": "resnet18", "weights": "none", "train-mode": "head", "image-size": "48"}',
    }
    runtime = LocalRuntime(
        tmp_path_factory.mktemp("stack") / "home", env=env, say=lambda m: None, serving=ray_serve, warm=shared_warm
    )
    runtime.start(port=0)
    try:
        runtime.upload(tiny_dataset, "pets")
        wait_for(runtime, "deployment.completed")
        yield runtime
    finally:
        runtime.stop()


@pytest.mark.e2e
def test_dataset_to_predictions_with_the_real_training_code(stack, tiny_dataset, tmp_path, capsys):
    runtime = stack
    # The stack's first run is done: what it announced, then what it serves.
    seen = [n["message"]["event"] for n in runtime.notifications()]
    assert seen == CHAIN, "every notification once, in order"
    messages = [n["message"] for n in runtime.notifications()]
    run = messages[0]["run_id"]
    assert all(m["run_id"] == run for m in messages)
    by_event = {m["event"]: m["detail"] for m in messages}
    assert by_event["tuning.completed"]["training_jobs"]["Completed"] == 2, "two trials ran"
    completed = by_event["training.completed"]
    forecast = by_event["tuning.started"]["forecast"]
    audited = by_event["dataset.audited"]
    assert audited["page"] == f"s3://droptrain-local/runs/{run}/reports/audit.html"
    assert runtime.bucket.path_of_uri(audited["audit"]).is_file(), "the audit job's report, where the pipeline reads it"
    assert forecast["trials"] == 2 and forecast["images"] > 0 and forecast["prices"]["training"]["source"] == "bundled"
    assert completed["cost"]["jobs"] == 3 and completed["cost"]["billable_seconds"] > 0, "two trials and the final job"
    assert [v["rule"] for v in completed["rules"]] == [
        "VanishingGradient",
        "ExplodingTensor",
        "Overfit",
        "Overtraining",
        "PoorWeightInitialization",
        "LossNotDecreasing",
    ]
    # The final job ran as two hosts through the PyTorch container's torchrun; one model, deployed.
    final_log = (runtime.home / "jobs" / f"{run}-final" / "job.log").read_text()
    assert "distributed: world size 2, rank 0, local rank 0, backend gloo" in final_log
    assert "] distributed: world size 2, rank 1, local rank 0, backend gloo" in final_log, "the second host's line"
    assert by_event["training.started"]["instance_count"] == 2 and by_event["tuning.started"]["instance_count"] == 1
    assert completed["report"] == f"s3://droptrain-local/runs/{run}/reports/report.html"
    assert runtime.bucket.path_of_uri(completed["report"]).is_file()
    classes = {p.name for p in (tiny_dataset / "train").iterdir()}
    image = sorted((tiny_dataset / "test").rglob("*.jpg"))[0]
    status, body = post_image(runtime.api_url, image, top_k=2)
    assert status == 200 and body["model"] == run
    assert len(body["predictions"]) == 2 and {p["label"] for p in body["predictions"]} <= classes
    status, body = post_image(runtime.api_url, Path(__file__))  # sent as image/jpeg, but it is Python
    assert status == 400 and body["error"]["code"] == "invalid_image"
    # JPEG magic bytes pass the API's own check; the model's 400 comes back as a 400, not a 502.
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(image.read_bytes()[:300])
    status, body = post_image(runtime.api_url, truncated)
    assert (status, body["error"]["code"]) == (400, "invalid_image"), body
    assert cli.main(["predict", str(image), "--url", runtime.api_url, "--top-k", "1"]) == 0
    assert "(model " + run + ")" in capsys.readouterr().out
    # The options reach the serving application through the local runtime as SageMaker's CustomAttributes.
    status, body = post_image(runtime.api_url, image, options={"explain": "true", "min_confidence": "1"})
    assert status == 200 and body["abstained"] is True and body["explanation"]["method"] == "grad-cam", body
    heatmap = tmp_path / "heatmap.png"
    argv = ["predict", str(image), "--url", runtime.api_url, "--explain", str(heatmap), "--min-confidence", "1"]
    assert cli.main(argv) == 0 and "not sure" in capsys.readouterr().out
    with Image.open(heatmap) as drawn, Image.open(image) as sent:
        assert drawn.size == sent.size
    status, body = post_image(runtime.api_url, image, options={"min_confidence": "7"})
    assert (status, body["error"]["code"]) == (400, "invalid_min_confidence")
    # CAPTURE_PERCENT=100: every answer the endpoint gave is kept as SageMaker keeps it, the doubtful ones
    # (the abstentions above among them) also under review/, whatever the sample rate.
    from chalice_app import capture

    kept = runtime.bucket.path("runs/capture/pets/droptrain-local-pets")
    sampled = [capture.parse(p.read_bytes()) for p in sorted((kept / "AllTraffic").rglob("*.jsonl"))]
    assert any(c.body == image.read_bytes() and c.answer["model"] == run for c in sampled), len(sampled)
    review = [capture.parse(p.read_bytes()) for p in sorted((kept / "review").rglob("*.jsonl"))]
    assert any(c.answer["abstained"] for c in review) and all(capture.doubtful(c.answer, 0.6) for c in review)
    # The final job's exports, handed out by the API (the file itself locally), checked by ONNX itself.
    import onnx

    # A binary answer needs an Accept that allows it (browsers and curl send */*), as on API Gateway.
    fetch = urllib.request.Request(
        f"{runtime.api_url}/projects/pets/versions/{run}/export/onnx", headers={"Accept": "*/*"}
    )
    with urllib.request.urlopen(fetch) as response:
        assert response.headers["Content-Type"] == "application/octet-stream"
        onnx.checker.check_model(onnx.load_from_string(response.read()))
    with urllib.request.urlopen(runtime.api_url + "/status") as response:
        state = json.loads(response.read())["projects"]["pets"]
    assert state["endpoint"]["status"] == "InService" and state["model"]["run_id"] == run
    assert state["model"]["test_accuracy"] is not None
    registered = by_event["model.registered"]
    assert registered["model_package_group"] == "droptrain-local-pets" and registered["version"] == 1
    assert "macro_f1" in registered["metrics"], "the job's evaluation.json reached the registry"

    # A second dataset is a second project: its own endpoint, and the first one keeps serving. Its final
    # job runs on one host (two hosts were the first run's to show; each cold host costs seconds).
    with configured(runtime, final_instance_count=1):
        runtime.upload(tiny_dataset, "flowers")
        wait_for_count(runtime, "deployment.completed", 2)
    flowers = [n["message"] for n in runtime.notifications() if n["message"]["event"] == "deployment.completed"][-1][
        "run_id"
    ]
    assert flowers.startswith("flowers-")
    for project, expected in (("pets", run), ("flowers", flowers)):
        status, body = post_image(runtime.api_url, image, project=project)
        assert status == 200 and body["model"] == expected, body
    status, body = post_image(runtime.api_url, image)
    assert status == 400 and body["error"]["code"] == "project_required"
    status, body = call_api(runtime.api_url, "/projects")
    assert [(p["project"], p["endpoint"], p["serving"]) for p in body["projects"]] == [
        ("flowers", "droptrain-local-flowers", flowers),
        ("pets", "droptrain-local-pets", run),
    ]
    # The hourly schedule runs the same function as Lambda's (idle stop: off locally unless asked).
    # And the drift round: both projects serve and captured their predictions (CAPTURE_PERCENT=100 here).
    assert runtime.run_schedules() == {
        "stop_idle_endpoints": "idle stop is off (IDLE_STOP_HOURS=0)",
        "check_drift": "drift checks started: flowers, pets",
    }
    # `droptrain status` reads the store, beside the running stack.
    assert cli.main(["status", "--home", str(runtime.home)]) == 0
    out = capsys.readouterr().out
    assert (
        f"run {run}: tuning Completed" in out
        and f"project droptrain-local-pets: endpoint InService, serving {run}" in out
    )
    assert f"▶ v1   {run}" in out and "project droptrain-local-flowers" in out
    assert "cost: " in out and "billable s over 3 jobs" in out


@contextlib.contextmanager
def configured(runtime: LocalRuntime, **changes):
    """The running stack's configuration with ``changes`` while the block runs, as it was after it."""
    services, original = runtime._services, runtime._services.config
    services.config = dataclasses.replace(original, **changes)
    try:
        yield
    finally:
        services.config = original


def wait_for_count(runtime: LocalRuntime, event: str, count: int, timeout: float = DEADLINE) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        seen = [n["message"]["event"] for n in runtime.notifications()]
        if seen.count(event) >= count:
            return
        if any(e.endswith(("failed", "rejected")) or e == "model.held" for e in seen):
            raise AssertionError(f"the pipeline stopped: {runtime.notifications()[-1]['subject']}")
        time.sleep(0.3)
    raise AssertionError(f"fewer than {count} {event} in {timeout}s")


ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts"


def _chromium_driver(width: int):
    """Debian's headless Chromium through Debian's chromedriver (``make test`` installs both)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = browser()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        f"--window-size={max(width, 800)},2400",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    # A window cannot be narrower than Chromium's minimum: a phone's viewport is emulated, as DevTools does.
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": 2400, "deviceScaleFactor": 1, "mobile": width < 800},
    )
    return driver


def _requested_urls(driver) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def _contrast(foreground: str, background: str) -> float:
    """WCAG 2 contrast ratio of two CSS rgb()/rgba() colours."""

    def luminance(css: str) -> float:
        channels = [float(c) / 255 for c in css[css.index("(") + 1 : css.index(")")].split(",")[:3]]
        linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    high, low = sorted((luminance(foreground), luminance(background)), reverse=True)
    return (high + 0.05) / (low + 0.05)


@pytest.mark.browser
def test_the_console_in_a_real_browser(stack, tiny_dataset):
    """Chromium loads the console from the local stack, asks the model about a test image, opens the
    run and finds its evaluation, and never reaches beyond the app."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import Select, WebDriverWait

    runtime = stack
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    pets = next(n["message"]["run_id"] for n in runtime.notifications() if n["message"]["run_id"].startswith("pets-"))
    classes = sorted(p.name for p in (tiny_dataset / "train").iterdir())
    image, other = sorted((tiny_dataset / "test" / classes[0]).glob("*.jpg"))[:2]
    for width, name in ((360, "phone"), (1280, "desktop")):
        driver = _chromium_driver(width)
        try:
            wait = WebDriverWait(driver, 30)
            driver.get(runtime.api_url + "/")
            wait.until(
                lambda d: any(
                    o.get_attribute("value") == "pets" for o in Select(d.find_element(By.ID, "project")).options
                )
            )
            Select(driver.find_element(By.ID, "project")).select_by_value("pets")
            driver.find_element(By.ID, "image").send_keys(str(image))
            wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "#predictions li .label")))
            labels = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#predictions li .label")]
            assert labels and set(labels) <= set(classes), labels
            assert pets in driver.find_element(By.ID, "predict-status").text
            # The evidence over the image, and "not sure" said as such (a floor no answer reaches).
            driver.find_element(By.ID, "explain").click()
            driver.find_element(By.ID, "min-confidence").send_keys("1")
            driver.find_element(By.ID, "image").send_keys(str(other))  # another file: a change event
            wait.until(lambda d: d.find_element(By.ID, "heatmap").is_displayed())
            heatmap = driver.find_element(By.ID, "heatmap")
            assert heatmap.get_attribute("src").startswith("data:image/png;base64,")
            assert "Grad-CAM" in heatmap.get_attribute("alt")
            with Image.open(other) as sent:
                assert driver.execute_script("return arguments[0].naturalWidth", heatmap) == sent.width
            assert driver.find_element(By.ID, "predict-status").text.startswith("Not sure")

            wait.until(ready.element_to_be_clickable((By.CSS_SELECTOR, f'button[data-run="{pets}"]'))).click()
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#per-class tbody tr")) == len(classes))
            per_class = [
                r.find_element(By.TAG_NAME, "td").text
                for r in driver.find_elements(By.CSS_SELECTOR, "#per-class tbody tr")
            ]
            assert per_class == classes
            matrix_rows = driver.find_elements(By.CSS_SELECTOR, "#confusion tbody tr")
            assert [r.find_element(By.TAG_NAME, "th").text for r in matrix_rows] == classes
            assert all(len(r.find_elements(By.TAG_NAME, "td")) == len(classes) for r in matrix_rows)
            timeline = driver.find_element(By.ID, "timeline").text
            assert "dataset.accepted" in timeline and "deployment.completed" in timeline
            assert driver.find_elements(By.CSS_SELECTOR, "#trials tbody tr.best"), "the best trial is marked"
            assert driver.find_element(By.ID, "report-link").get_attribute("href").endswith(f"/runs/{pets}/report")
            wait.until(lambda d: "v1" in d.find_element(By.ID, "projects").text)
            # Each project's drift checks under its versions (the hourly round above started some).
            wait.until(lambda d: "Drift checks" in d.find_element(By.ID, "projects").text)
            drift = driver.execute_script(
                "const block = [...document.querySelectorAll('#projects .project')]"
                ".find(b => b.querySelector('h3').textContent.startsWith('pets '));"
                "const cell = block.querySelector("
                "'table[aria-label$=\"drift checks, newest first\"] tbody td:nth-child(2)');"
                "return cell ? cell.textContent : block.textContent.includes('No drift check yet.') ? 'none' : null"
            )
            assert drift in ("none", "drift", "no_drift", "not_enough_data"), drift
            assert driver.execute_script("return window.innerWidth") == width
            driver.execute_script("window.scrollTo(0, 0)")
            driver.save_screenshot(str(ARTIFACTS / f"console-{name}.png"))

            # Basic accessibility: every control is labelled, the page does not scroll sideways at
            # this width, and text is readable (WCAG AA contrast).
            unlabelled = driver.execute_script(
                "return [...document.querySelectorAll('input, select, button')].filter(e => "
                "!(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())"
                ".map(e => e.id || e.outerHTML)"
            )
            assert unlabelled == []
            # Keyboard: every control is reachable with Tab, and Enter on the drop zone opens the file picker.
            assert driver.execute_script(
                "return [...document.querySelectorAll('button, select, a[href], #drop, #api-key')]"
                ".every(e => e.tabIndex >= 0)"
            )
            assert driver.find_element(By.ID, "drop").get_attribute("tabindex") == "0"
            assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
            for selector in ("body", "button", "th", "#timeline li"):
                element = driver.find_element(By.CSS_SELECTOR, selector)
                color, background = (
                    element.value_of_css_property("color"),
                    driver.execute_script(
                        "let e = arguments[0]; while (e) { const b = getComputedStyle(e).backgroundColor;"
                        " if (b && !b.endsWith(', 0)') && b !== 'transparent') return b; e = e.parentElement; }"
                        " return 'rgb(255, 255, 255)';",
                        element,
                    ),
                )
                assert _contrast(color, background) >= 4.5, (selector, color, background)
            if name == "desktop":
                _review_by_keyboard(driver, wait, runtime, classes[0])
            # Everything came from the app (blob: is the chosen image's preview).
            outside = [u for u in _requested_urls(driver) if not u.startswith((runtime.api_url, "blob:", "data:"))]
            assert outside == [], outside
            errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            assert errors == [], errors
            # The console's state-changing call passes the API's cross-site checks (JSON, its own Origin)
            # and reaches the handler: with one version there is none to roll back to (a 409,
            # which the browser logs as an error: after the check above).
            wait.until(ready.element_to_be_clickable((By.XPATH, "//button[starts-with(., 'Roll back')]"))).click()
            wait.until(lambda d: "to roll back to" in d.find_element(By.ID, "versions-status").text)
        finally:
            driver.quit()


def _review_by_keyboard(driver, wait, runtime, first_class: str) -> None:
    """The review page: the doubtful answer's image (from the API's own route), labelled with the key 1."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    before = call_api(runtime.api_url, "/projects/pets/review")[1]["items"]
    assert before, "the not-sure answers above are in the queue"
    Select(driver.find_element(By.ID, "review-project")).select_by_value("pets")
    # Another project's queue may show first (the first one listed): pets' is the one to label.
    wait.until(lambda d: " to review in pets " in d.find_element(By.ID, "review-status").text + " ")
    wait.until(lambda d: d.find_element(By.ID, "review-card").is_displayed())
    image = driver.find_element(By.ID, "review-image")
    wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image))
    assert image.get_attribute("src").startswith("blob:")
    first_button = "return (document.querySelector('#review-classes button') || {}).textContent"
    wait.until(lambda d: d.execute_script(first_button) == f"1 {first_class}")
    card = driver.find_element(By.ID, "review-card")
    driver.execute_script("arguments[0].focus()", card)
    ActionChains(driver).send_keys("1").perform()
    wait.until(lambda d: f"labelled {first_class}" in d.find_element(By.ID, "review-status").text)
    after = call_api(runtime.api_url, "/projects/pets/review")[1]["items"]
    assert [i["id"] for i in after] == [i["id"] for i in before[1:]], "the newest, labelled, leaves the queue"
    assert list(runtime.bucket.path("runs/review/pets/labelled").rglob(f"{first_class}/{before[0]['id']}.jpg"))
    assert driver.switch_to.active_element == card, "the keyboard stays on the queue"


def test_the_console_page_and_its_json_routes(stack):
    """The page holds no script of its own and a policy that lets it reach the app alone; the runs'
    JSON routes read what the pipeline wrote."""
    import urllib.error
    import urllib.request

    with urllib.request.urlopen(stack.api_url + "/") as response:
        page = response.read().decode()
        policy = response.headers["Content-Security-Policy"]
    assert 'src="console.js"' in page and "<script>" not in page, "no inline script"
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy and "script-src 'self'" in policy
    status, body = call_api(stack.api_url, "/runs")
    assert status == 200 and [r["state"] for r in body["runs"] if r["run_id"].startswith("pets-")] == ["deployed"]
    status, body = call_api(stack.api_url, "/runs/nope-00000000")
    assert status == 404 and body["error"]["code"] == "unknown_run"
    status, body = call_api(stack.api_url, "/runs/..%2F..%2Fetc")
    assert status == 404


def test_a_batch_job_predicts_a_prefix_as_the_endpoint_does(stack, tiny_dataset, capsys):
    """POST /projects/pets/batch (through droptrain batch) runs a Batch Transform job on the local SageMaker:
    the version's artifact on Ray Serve, one line per image, a broken image a line with its error."""
    runtime = stack
    images = sorted((tiny_dataset / "test").rglob("*.jpg"))[:6]
    for index, image in enumerate(images):
        runtime.bucket.put(f"batch/backlog/{index % 2}/{index}-{image.name}", image.read_bytes())
    runtime.bucket.put("batch/backlog/broken.jpg", b"\xff\xd8\xff" + bytes(200))
    runtime.bucket.put("batch/backlog/notes.txt", b"not an image")
    assert cli.main(["batch", "batch/backlog/", "--project", "pets", "--top-k", "2", "--url", runtime.api_url]) == 0
    output = capsys.readouterr().out.splitlines()[-1].split(" at ")[1].split(" ")[0]
    wait_for_event(runtime, "batch.completed")
    done = [n["message"] for n in runtime.notifications() if n["message"]["event"].startswith("batch.")]
    assert [m["event"] for m in done] == ["batch.started", "batch.completed"], done
    assert (done[1]["detail"]["predicted"], done[1]["detail"]["failed"]) == (6, 1)
    assert done[0]["detail"]["skipped_objects"] == 1 and done[1]["detail"]["output"] == output
    lines = [json.loads(line) for line in runtime.bucket.path_of_uri(output).read_text().splitlines()]
    assert len(lines) == 7 and all(set(line) == {"key", "predictions", "abstained", "error"} for line in lines)
    by_key = {line["key"]: line for line in lines}
    assert by_key["batch/backlog/broken.jpg"]["error"]["code"] == "invalid_image"
    for index, image in enumerate(images):
        line = by_key[f"batch/backlog/{index % 2}/{index}-{image.name}"]
        status, body = post_image(runtime.api_url, image, top_k=2, project="pets")
        assert status == 200 and line["error"] is None
        assert [p["label"] for p in line["predictions"]] == [p["label"] for p in body["predictions"]], image
        assert line["predictions"][0]["probability"] == pytest.approx(body["predictions"][0]["probability"], abs=1e-5)
    status, body = call_api(
        runtime.api_url, "/projects/pets/batch", "POST", b'{"input_prefix": "batch/none/"}', "application/json"
    )
    assert (status, body["error"]["code"]) == (400, "no_images")


def test_inverted_colours_seen_by_the_endpoint_are_drift(stack, tiny_dataset, tmp_path):
    """Predictions of inverted images are captured (CAPTURE_PERCENT=100 here), and the drift check, a local
    Processing job running training/drift_check.py, finds them unlike the training set."""
    from PIL import ImageOps

    runtime = stack
    for index, image in enumerate(sorted(tiny_dataset.rglob("*.jpg"))[:80]):
        with Image.open(image) as shown:
            ImageOps.invert(shown.convert("RGB")).save(tmp_path / "inverted.jpg")
        status, _ = post_image(runtime.api_url, tmp_path / "inverted.jpg", project="pets")
        assert status == 200, index
    status, body = call_api(runtime.api_url, "/projects/pets/drift-check", "POST", b"{}", "application/json")
    assert status == 202 and body["job"], body
    wait_for_event(runtime, "drift.detected")
    (detected,) = [n["message"] for n in runtime.notifications() if n["message"]["event"] == "drift.detected"]
    assert detected["detail"]["p_value"] < detected["detail"]["alpha"] and detected["detail"]["sample_size"] >= 80
    assert detected["detail"]["examples"], "a few captures to look at"
    status, body = call_api(runtime.api_url, "/projects/pets/drift")
    assert status == 200 and body["checks"][0]["status"] == "drift" and body["checks"][0]["job"] == detected["job"]


def test_doubtful_answers_are_reviewed_and_the_model_retrains_from_where_it_stands(stack, tiny_dataset, capsys):
    """The review queue fills with doubtful answers (their images as the endpoint got them); three labelled,
    POST /projects/pets/retrain runs a warm-started job on the dataset and them, which the gate judges."""
    runtime = stack
    serving = call_api(runtime.api_url, "/projects/pets")[1]["serving"]
    first, second = sorted(os.listdir(tiny_dataset / "test"))[:2]
    # Two of one class: of a class's labelled images the second is held out for the gate.
    images = sorted((tiny_dataset / "test" / first).glob("*.jpg"))[-2:]
    images.append(sorted((tiny_dataset / "test" / second).glob("*.jpg"))[-1])
    for image in images:  # a floor no answer reaches: each one is doubtful
        status, body = post_image(runtime.api_url, image, project="pets", options={"min_confidence": "1"})
        assert status == 200 and body["abstained"], body
    status, queue = call_api(runtime.api_url, "/projects/pets/review")
    assert status == 200 and queue["classes"] == sorted(os.listdir(tiny_dataset / "train"))
    newest = queue["items"][:3]
    for item, image in zip(newest, reversed(images)):  # newest first
        fetch = urllib.request.Request(f"{runtime.api_url}/{item['image_url']}", headers={"Accept": "image/jpeg"})
        with urllib.request.urlopen(fetch) as response:
            assert response.read() == image.read_bytes(), "the image the endpoint was sent"
        decision = json.dumps({"label": image.parent.name}).encode()
        status, body = call_api(
            runtime.api_url, f"/projects/pets/review/{item['id']}", "POST", decision, "application/json"
        )
        assert status == 200 and body["label"] == image.parent.name, body
    # One host, as the second project's run above; a canary that bakes 1 s a step, not the stage's 3.
    with configured(runtime, final_instance_count=1, rollout_bake_seconds=1):
        assert cli.main(["retrain", "pets", "--url", runtime.api_url]) == 0
        said = capsys.readouterr().out
        run = said.split(" run ", 1)[1].split(" ", 1)[0]
        assert f"pets: run {run} from {serving}, " in said, said
        (started,) = [n["message"]["detail"] for n in runtime.notifications() if n["message"]["run_id"] == run]
        assert started["warm_start_from"] == serving
        assert sum(sum(splits.values()) for splits in started["reviewed_images"].values()) >= 3
        deadline = time.time() + DEADLINE
        ended: list = []
        while time.time() < deadline and not ended:
            mine = [n["message"] for n in runtime.notifications() if n["message"]["run_id"] == run]
            ended = [
                m for m in mine if m["event"] in ("deployment.completed", "model.held") or m["event"].endswith("failed")
            ]
            time.sleep(0.5)
    assert ended and ended[0]["event"] in ("deployment.completed", "model.held"), [m["event"] for m in mine]
    (training,) = [m for m in mine if m["event"] == "training.started"]
    assert training["detail"]["warm_start_from"] == serving
    log = (runtime.home / "jobs" / f"{run}-final" / "job.log").read_text()
    assert f"warm start from {serving}: " in log and "reviewed images added" in log
    # Judged against the serving version on the same test split (the held-out reviewed image among it).
    version = next(v for v in call_api(runtime.api_url, "/projects/pets")[1]["versions"] if v["run_id"] == run)
    if ended[0]["event"] == "model.held":
        assert "both evaluated on the new version's test split" in ended[0]["detail"]["gate"]["basis"]
    else:
        assert version["status"] == "Approved" and version["approval_description"].startswith("droptrain gate: ")
    evaluation = json.loads(runtime.bucket.path(f"runs/{run}/reports/evaluation.json").read_text())
    assert evaluation["baseline"]["run_id"] == serving and evaluation["baseline"]["classes_match"] is True
    reviewed = started["reviewed_images"]
    assert any(splits.get("test") for splits in reviewed.values()), reviewed
    for name, scores in evaluation["per_class"].items():
        held_out = len(list((tiny_dataset / "test" / name).glob("*.jpg"))) + reviewed.get(name, {}).get("test", 0)
        assert scores["support"] == held_out, (name, reviewed)


def test_budget_and_the_idle_cycle_on_the_local_stack(stack, tiny_dataset, tmp_path):
    """MAX_RUN_COST_USD rejects a run that cannot fit before anything starts; IDLE_STOP_HOURS stops an
    endpoint nobody invoked, and the next prediction starts it again."""
    from datetime import datetime, timedelta, timezone

    runtime = stack
    with configured(runtime, max_run_cost_usd=0.001):
        runtime.upload(tiny_dataset, "budget")
        wait_for_event(runtime, "dataset.rejected")
        rejected = [n["message"] for n in runtime.notifications() if n["message"]["event"] == "dataset.rejected"][-1]
        assert "over MAX_RUN_COST_USD $0.00" in rejected["detail"]["reasons"][0]
        assert not [n for n in runtime.store.names("tuning-job") if n.startswith("budget-")]

    with configured(runtime, idle_stop_hours=1):
        later = datetime.now(timezone.utc) + timedelta(hours=3)
        outcome = runtime.run_schedules(later)["stop_idle_endpoints"]
        assert outcome.startswith("stopped ") and "pets" in outcome.split(": ", 1)[1].split(", "), outcome
        assert runtime.endpoints.describe("droptrain-local-pets") is None
        image = sorted((tiny_dataset / "test").rglob("*.jpg"))[0]
        status, body = post_image(runtime.api_url, image, project="pets")
        assert (status, body["error"]["code"]) == (503, "model_sleeping")
        deadline = time.time() + DEADLINE
        while time.time() < deadline and (post_image(runtime.api_url, image, project="pets")[0] != 200):
            time.sleep(0.5)
        status, body = post_image(runtime.api_url, image, project="pets")
        assert status == 200 and body["model"].startswith("pets-"), "awake again, serving the same run"


def wait_for_event(runtime: LocalRuntime, event: str, timeout: float = DEADLINE) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and event not in [n["message"]["event"] for n in runtime.notifications()]:
        time.sleep(0.2)


class _Webhook(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        self.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.e2e
def test_restart_mid_tuning_finishes_the_run_once(
    tiny_dataset, trained_job, tmp_path, monkeypatch, ray_serve, shared_warm
):
    monkeypatch.setenv("FAKE_EPOCH_SECONDS", "0.4")
    monkeypatch.setenv("FAKE_MODEL_SOURCE", str(trained_job["paths"].model))
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "fake.log"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Webhook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    webhook = f"http://127.0.0.1:{server.server_address[1]}/hook"
    # The fake source has no audit.py: this test is about resuming the tuning job, not the audit.
    env = {"MAX_TUNING_JOBS": "3", "MAX_PARALLEL_JOBS": "1", "TUNING_RANGES": '{"epochs": [3, 5]}', "AUDIT": "false"}
    home = tmp_path / "home"

    jobs_with_output: set[str] = set()
    second_trial_running = threading.Event()

    def on_line(job: str, line: str) -> None:
        if line.startswith("epoch="):  # the script itself is running, past the toolkit's set-up
            jobs_with_output.add(job)
        if len(jobs_with_output) >= 2:
            second_trial_running.set()

    first = LocalRuntime(
        home,
        env=env,
        say=lambda m: None,
        source_dir=FAKE_SOURCE,
        webhook=webhook,
        serving=ray_serve,
        warm=shared_warm,
        on_line=on_line,
    )
    first.start(serve_api=False)
    first.upload(tiny_dataset, "pets")
    assert second_trial_running.wait(DEADLINE), "the second trial never started"
    first.stop()  # mid-tuning: the first trial done, the second one running
    statuses = Counter(s for _, s, _ in first.store.records("training-job"))
    assert statuses["Completed"] >= 1 and statuses["InProgress"] == 1
    assert first.store.status("tuning-job", next(iter(first.store.names("tuning-job")))) == "InProgress"

    second = LocalRuntime(
        home, env=env, say=lambda m: None, source_dir=FAKE_SOURCE, webhook=webhook, serving=ray_serve, warm=shared_warm
    )
    second.start(serve_api=False)
    try:
        seen = wait_for(second, "deployment.completed")
    finally:
        second.stop()
    server.shutdown()
    unaudited = [e for e in CHAIN if e != "dataset.audited"]  # AUDIT=false here
    assert seen == unaudited, "nothing sent twice across the restart"
    trials = [n for n, _, r in second.store.records("training-job") if r.get("TuningJobName")]
    assert len(trials) == 3, "the interrupted trial resumed; no extra trial was started"
    log = [json.loads(line) for line in (tmp_path / "fake.log").read_text().splitlines()]
    starts = Counter(e["job"] for e in log if "start" in e)
    assert max(starts.values()) == 2 and sum(1 for v in starts.values() if v == 2) == 1, (
        "only the interrupted trial ran again"
    )
    assert [r["message"]["event"] for r in _Webhook.received] == unaudited


def test_a_bad_dataset_is_rejected_locally(tmp_path, ray_serve, shared_warm):
    from droptrain.synthetic import make_dataset

    data = tmp_path / "one"
    make_dataset(tmp_path / "two", classes=2, per_class=5, size=16)
    (data / "train").mkdir(parents=True)
    import shutil

    shutil.copytree(next((tmp_path / "two" / "train").iterdir()), data / "train" / "only-class")
    runtime = LocalRuntime(tmp_path / "home", say=lambda m: None, serving=ray_serve, warm=shared_warm)
    runtime.start(serve_api=False)
    try:
        runtime.upload(data, "one")
        deadline = time.time() + 30
        while time.time() < deadline and not runtime.notifications():
            time.sleep(0.1)
    finally:
        runtime.stop()
    (note,) = runtime.notifications()
    assert note["message"]["event"] == "dataset.rejected" and "at least 2 classes" in note["subject"]
    assert list(runtime.store.names("tuning-job")) == []
