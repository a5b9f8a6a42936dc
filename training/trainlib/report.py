"""The job's debugging and profiling report: one self-contained HTML file (plots embedded as PNG).

Sections: findings in plain words, rule verdicts, training curves, step-time breakdown,
utilisation over time, the confusion matrix, and the heaviest operators of the profiled window.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _figure_png(draw) -> str | Exception:
    """The plot as base64 PNG; or, when it cannot be drawn, why: a report is never worth a failed job."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    try:
        draw(ax)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
    except Exception as exc:  # matplotlib's errors have no common base
        log.warning("a plot of the report could not be drawn: %s: %s", type(exc).__name__, exc)
        return exc
    finally:
        plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _img(png: str | Exception, alt: str) -> str:
    if isinstance(png, Exception):
        return f"<p>The {html.escape(alt)} could not be drawn ({html.escape(type(png).__name__)}).</p>"
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{png}">'


LOG_SCALE_SPAN = 100  # a loss plot whose largest value is this many times its smallest is drawn on a log axis


def _curves(history: list[dict]):
    def draw(ax):
        epochs = [h["epoch"] for h in history]
        ax.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
        ax.plot(epochs, [h["valid_loss"] for h in history], "o-", label="valid loss")
        ax.set_xlabel("epoch")
        losses = [h[k] for h in history for k in ("train_loss", "valid_loss") if h[k] > 0]
        if losses and max(losses) / min(losses) >= LOG_SCALE_SPAN:
            ax.set_yscale("log")  # losses spanning decades (early epochs from scratch) flatten on a linear axis
            ax.set_ylabel("loss (log scale)")
        else:
            ax.set_ylabel("loss")
        twin = ax.twinx()
        twin.plot(epochs, [h["valid_accuracy"] for h in history], "s--", color="tab:green", label="valid accuracy")
        if all("valid_balanced_accuracy" in h for h in history):
            balanced = [h["valid_balanced_accuracy"] for h in history]
            twin.plot(epochs, balanced, "^:", color="tab:purple", label="valid balanced accuracy")
        twin.set_ylim(0, 1)
        twin.set_ylabel("accuracy")
        lines = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
        ax.legend(lines, [line.get_label() for line in lines], loc="center right")
        ax.set_title("Training curves")

    return draw


def _breakdown(steps: list[dict]):
    def draw(ax):
        xs = range(len(steps))
        bottom = [0.0] * len(steps)
        for key, colour in (("data", "tab:red"), ("compute", "tab:blue"), ("optimizer", "tab:orange")):
            values = [s[key] * 1000 for s in steps]
            ax.bar(xs, values, bottom=bottom, color=colour, label=key, width=1.0)
            bottom = [b + v for b, v in zip(bottom, values)]
        ax.set_xlabel("step")
        ax.set_ylabel("ms")
        ax.legend()
        ax.set_title("Where each step's time went")

    return draw


def _utilisation(samples: list[dict]):
    def draw(ax):
        t = [s["t"] for s in samples]
        for key, label in (("cpu_percent", "CPU %"), ("memory_percent", "memory %"), ("gpu_percent", "GPU %")):
            if any(key in s for s in samples):
                ax.plot(t, [s.get(key, float("nan")) for s in samples], label=label)
        ax.set_ylim(0, 100)
        ax.set_xlabel("seconds")
        ax.legend()
        ax.set_title("Utilisation over time")

    return draw


def _confusion(evaluation: dict):
    def draw(ax):
        matrix = evaluation["confusion_matrix"]
        classes = evaluation["classes"]
        ax.imshow(matrix, cmap="Blues")
        # Class names are the user's folder names, drawn as they are: "$$" is not mathtext here.
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=7, parse_math=False)
        ax.set_yticks(range(len(classes)), classes, fontsize=7, parse_math=False)
        for i, row in enumerate(matrix):
            for j, v in enumerate(row):
                ax.text(j, i, str(v), ha="center", va="center", fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"Confusion matrix ({evaluation.get('split', 'test')} split)")

    return draw


def _reliability(calibration: dict):
    """Accuracy against confidence per bin, before and after the temperature: on the diagonal is calibrated."""

    def draw(ax):
        ax.plot([0, 1], [0, 1], color="#999", linestyle=":", label="calibrated")
        for key, label in (("bins_before", "before"), ("bins", f"after (T={calibration['temperature']:.3g})")):
            filled = [b for b in calibration[key] if b["count"]]
            ax.plot([b["confidence"] for b in filled], [b["accuracy"] for b in filled], marker="o", label=label)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.legend()
        ax.set_title(f"Reliability ({calibration.get('split', 'test')} split)")

    return draw


def _calibration(evaluation: dict) -> str:
    """The calibration's paragraph: the temperature, the error before and after, and why it was not kept."""
    calibration = evaluation.get("calibration")
    if not calibration:
        return ""
    text = (
        f"Temperature {calibration['temperature']:.4g}: expected calibration error on the "
        f"{calibration['split']} split {calibration['ece_before']:.4f} before, {calibration['ece_after']:.4f} after."
    )
    if calibration.get("reason"):
        text += f" {calibration['reason'][0].upper()}{calibration['reason'][1:]}."
    abstention = calibration.get("abstention")
    if abstention:
        text += f" Abstains on {abstention['abstained_share']:.1%} of the {calibration['split']} split."
    return f"<h2>Calibration</h2><p id='calibration'>{html.escape(text)}</p>"


def _figures(history: list[dict], profile: dict[str, Any], evaluation: dict | None) -> list[str]:
    figures = []
    if history:
        figures.append(_img(_figure_png(_curves(history)), "training curves"))
    if profile.get("steps"):
        figures.append(_img(_figure_png(_breakdown(profile["steps"])), "step time breakdown"))
    if profile.get("samples"):
        figures.append(_img(_figure_png(_utilisation(profile["samples"])), "utilisation over time"))
    if evaluation:
        figures.append(_img(_figure_png(_confusion(evaluation)), "confusion matrix"))
    if evaluation and evaluation.get("calibration"):
        figures.append(_img(_figure_png(_reliability(evaluation["calibration"])), "reliability diagram"))
    return figures


def _scores(evaluation: dict) -> tuple[str, str]:
    """The held-out split's accuracy, balanced accuracy and macro-F1 as table rows, and the split's name."""
    named = (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"), ("macro_f1", "macro-F1"))
    rows = "".join(
        f"<tr><td>{label}</td><td>{evaluation[key]:.4f}</td></tr>"
        for key, label in named
        if isinstance(evaluation.get(key), (int, float))
    )
    return rows, html.escape(str(evaluation.get("split", "")))


def render(
    path: Path,
    *,
    run_id: str,
    history: list[dict],
    evaluation: dict | None,
    verdicts: list[dict],
    profile: dict[str, Any],
    findings: list[str],
) -> Path:
    figures = _figures(history, profile, evaluation)
    rows = "".join(
        f"<tr class='{html.escape(v['status'])}'><td>{html.escape(v['rule'])}</td><td>{html.escape(v['status'])}</td>"
        f"<td>{'' if v['step'] is None else v['step']}</td><td>{html.escape(v['message'])}</td></tr>"
        for v in verdicts
    )
    ops = "".join(
        f"<tr><td>{html.escape(o['op'])}</td><td>{o['calls']}</td><td>{o['self_ms']:.2f}</td></tr>"
        for o in profile.get("torch_ops", [])
    )
    items = "".join(f"<li>{html.escape(f)}</li>" for f in findings)
    scores, split = _scores(evaluation or {})
    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>droptrain report: {html.escape(run_id)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 980px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; width: 100%; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; }}
tr.IssuesFound td {{ background: #fde2e1; }} tr.Error td {{ background: #fff4cc; }}
img {{ display: block; margin: 1em 0; max-width: 100%; }}
</style></head><body>
<h1>Training report: {html.escape(run_id)}</h1>
<p>Device: {html.escape(profile.get("device", "?"))}; {len(history)} epochs;
{len(profile.get("steps", []))} profiled steps.</p>
<h2>Findings</h2><ul id="findings">{items}</ul>
<h2>Held-out evaluation ({split} split)</h2>
<table id="scores"><tr><th>metric</th><th>value</th></tr>{scores}</table>
{_calibration(evaluation or {})}
<h2>Debugger rules</h2>
<p id="rules-where">smdebug's rules, run inside this training job on what its hook saved: they work in every
account. SageMaker's managed Debugger, closed to new customers since 2026-07-30, is not needed for them.</p>
<table id="rules"><tr><th>rule</th><th>status</th><th>step</th><th>message</th></tr>{rows}</table>
<h2>Plots</h2>
{"".join(figures)}
<h2>Heaviest operators (torch.profiler window)</h2>
<table id="ops"><tr><th>operator</th><th>calls</th><th>self time (ms)</th></tr>{ops}</table>
</body></html>
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc)
    return path
