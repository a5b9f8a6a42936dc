"""``droptrain status``: what the local stack knows, read from its store (no server needed)."""

from __future__ import annotations

from pathlib import Path

from chalice_app import cost, names
from chalice_app.pipeline.versions import run_of_model_data
from droptrain.local.store import Store


def render(home: Path) -> str:
    db = home / "state.db"
    if not db.exists():
        return f"no local runs yet ({db} does not exist): droptrain up, then droptrain upload PATH"
    store = Store(db)
    lines = []
    try:
        trainings = list(store.records("training-job"))
        for name, status, tuning in store.records("tuning-job"):
            config = tuning["HyperParameterTuningJobConfig"]
            best = tuning.get("BestTrainingJob", {}).get("TrainingJobName")
            lines.append(
                f"run {name}: tuning {status} "
                f"({config['Strategy']}, dataset {names.dataset_of_tags(tuning['Tags']) or '?'})"
            )
            for child, child_status, record in trainings:
                if record.get("TuningJobName") != name:
                    continue
                metrics = {m["MetricName"]: m["Value"] for m in record.get("FinalMetricDataList", [])}
                tuned = {
                    k: v
                    for k, v in record["HyperParameters"].items()
                    if k in {r["Name"] for rs in config["ParameterRanges"].values() for r in rs}
                }
                mark = "★" if child == best else " "
                acc = metrics.get("valid:accuracy")
                lines.append(
                    f"  {mark} {child:<34} {child_status:<10} "
                    f"valid:accuracy {acc if acc is not None else '-':<8} {tuned}"
                )
            final_name = names.final_job_name(name)
            final = store.get("training-job", final_name)
            if final:
                metrics = {m["MetricName"]: m["Value"] for m in final.get("FinalMetricDataList", [])}
                lines.append(
                    f"  final {final_name}: {store.status('training-job', final_name)}, "
                    f"test:accuracy {metrics.get('test:accuracy', '-')}"
                    + (f" ({final['FailureReason']})" if final.get("FailureReason") else "")
                )
            lines.append(
                "  "
                + _cost_line(
                    name, [r for _, _, r in trainings if r.get("TuningJobName") == name] + ([final] if final else [])
                )
            )
        lines += _projects(store)
        lines += [f"skipped: {line}; droptrain up moves it aside" for line in store.unreadable]
    finally:
        store.close()
    return "\n".join(lines) or "no runs yet"


def _projects(store) -> list[str]:
    """Per project: its endpoint and its versions, with the one serving marked."""

    lines = []
    packages = list(store.records("model-package"))
    endpoints = {name: (status, record) for name, status, record in store.records("endpoint")}
    for group, _, _ in store.records("model-package-group"):
        status, endpoint = endpoints.pop(group, (None, None))
        serving = endpoint["EndpointConfigName"] if endpoint else None
        lines.append(
            f"project {group}: endpoint {status or 'not deployed'}"
            + (f", serving {serving}" if serving else "")
            + (f" (last deployment: {endpoint['FailureReason']})" if endpoint and endpoint.get("FailureReason") else "")
        )
        for name, approval, package in sorted(packages, key=lambda p: p[2]["ModelPackageVersion"]):
            if name.rsplit("/", 1)[0] != group:
                continue
            meta = package.get("CustomerMetadataProperties", {})
            run = meta.get("droptrain:run-id") or run_of_model_data(
                package["InferenceSpecification"]["Containers"][0]["ModelDataUrl"]
            )
            mark = "▶" if run == serving else " "
            lines.append(
                f"  {mark} v{package['ModelPackageVersion']:<3} {run:<30} {approval:<22} "
                f"test:accuracy {meta.get('test:accuracy', '-'):<8} macro_f1 {meta.get('macro_f1', '-'):<8} "
                f"{package['CreationTime'][:19]}"
            )
    for name, (status, endpoint) in endpoints.items():
        lines.append(f"endpoint {name}: {status}, serving {endpoint['EndpointConfigName']}")
    return lines


def _cost_line(run: str, jobs: list[dict]) -> str:
    """What the run's jobs would have cost on SageMaker: their billable seconds at the bundled price
    of the instance type they asked for (locally, this machine's time stands in for the instance's)."""

    billed = {
        j["TrainingJobName"]: j["BillableTimeInSeconds"] for j in jobs if j.get("BillableTimeInSeconds") is not None
    }
    instance = next((j["ResourceConfig"]["InstanceType"] for j in jobs if j.get("ResourceConfig")), "")
    spent = cost.actual(billed, cost.bundled_price(instance, "Training"))
    price = f"${spent['usd']:.4f} at {instance}'s bundled price" if "usd" in spent else "no price known"
    return f"cost: {spent['billable_seconds']:.0f} billable s over {spent['jobs']} jobs, {price}"
