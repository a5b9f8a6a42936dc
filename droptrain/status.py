"""``droptrain status``: what the local stack knows, read from its store (no server needed)."""

from __future__ import annotations

from pathlib import Path


def render(home: Path) -> str:
    from chalice_app import names
    from droptrain.local.store import Store

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
            lines.append(f"run {name}: tuning {status} ({config['Strategy']}, dataset {names.dataset_of_tags(tuning['Tags']) or '?'})")
            for child, child_status, record in trainings:
                if record.get("TuningJobName") != name:
                    continue
                metrics = {m["MetricName"]: m["Value"] for m in record.get("FinalMetricDataList", [])}
                tuned = {k: v for k, v in record["HyperParameters"].items()
                         if k in {r["Name"] for rs in config["ParameterRanges"].values() for r in rs}}
                mark = "★" if child == best else " "
                acc = metrics.get("valid:accuracy")
                lines.append(f"  {mark} {child:<34} {child_status:<10} valid:accuracy {acc if acc is not None else '-':<8} {tuned}")
            final_name = names.final_job_name(name)
            final = store.get("training-job", final_name)
            if final:
                metrics = {m["MetricName"]: m["Value"] for m in final.get("FinalMetricDataList", [])}
                lines.append(f"  final {final_name}: {store.status('training-job', final_name)}, test:accuracy {metrics.get('test:accuracy', '-')}"
                             + (f" ({final['FailureReason']})" if final.get("FailureReason") else ""))
        for name, status, endpoint in store.records("endpoint"):
            lines.append(f"endpoint {name}: {status}, serving {endpoint['EndpointConfigName']}"
                         + (f" (last deployment: {endpoint['FailureReason']})" if endpoint.get("FailureReason") else ""))
    finally:
        store.close()
    return "\n".join(lines) or "no runs yet"
