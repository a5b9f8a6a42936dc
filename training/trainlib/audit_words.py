"""The audit's warnings in words: each kind once, counted, with a few files as examples (the report
keeps the full lists)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

EXAMPLES = 3  # files named in a warning or a blocking finding; the report lists them all


def examples(paths: list[str]) -> str:
    shown = ", ".join(paths[:EXAMPLES])
    return f" (e.g. {shown}{', …' if len(paths) > EXAMPLES else ''})" if paths else ""


def pair_words(duplicate: dict[str, Any]) -> str:
    a, b = (f["path"] for f in duplicate["files"])
    return f"{a} ≈ {b} ({duplicate['kind']}, similarity {duplicate['score']:.2f})"


def mode_lines(samples: Sequence[Any]) -> list[str]:
    """Colour modes other than RGB, a line a mode: a fact of the dataset, not a finding per image."""
    by_mode: dict[str, list[str]] = defaultdict(list)
    for sample in samples:
        if sample.mode != "RGB":
            by_mode[sample.mode].append(sample.path)
    names = {
        "L": "grey",
        "LA": "grey with alpha",
        "1": "black and white",
        "P": "palette",
        "CMYK": "CMYK",
        "RGBA": "RGB with alpha",
        "I;16": "16-bit grey",
        "I": "32-bit grey",
        "F": "floating-point grey",
    }
    lines = []
    for mode, paths in sorted(by_mode.items(), key=lambda item: -len(item[1])):
        what = names.get(mode, mode)
        count = "all " if len(paths) == len(samples) else ""
        lines.append(
            f"{count}{len(paths):,} image(s) are {what} ({mode}); training converts them to RGB"
            + ("" if count else examples(paths))
        )
    return lines


def warning_lines(report: dict[str, Any], samples: Sequence[Any]) -> list[str]:
    """Every warning kind once, counted, with a few files; the report holds the full lists."""
    out = []
    by_where: dict[str, list[dict]] = defaultdict(list)
    for duplicate in report["duplicates"]:
        by_where[duplicate["where"]].append(duplicate)
    for where in ("across splits", "within a class"):
        if by_where[where]:
            pairs = "; ".join(pair_words(d) for d in by_where[where][:EXAMPLES])
            out.append(f"{len(by_where[where])} duplicate pair(s) {where}, e.g. {pairs}")
    if by_where["across classes"]:
        out.append(
            f"{len(by_where['across classes'])} possible mislabel(s): the same image under two classes, e.g. "
            + "; ".join(
                pair_words(d) + f" [{' / '.join(f['class'] for f in d['files'])}]"
                for d in by_where["across classes"][:EXAMPLES]
            )
        )
    out += mode_lines(samples)
    limits = report["thresholds"]
    for key, words in (
        ("unreadable", "unreadable file(s)"),
        ("tiny_images", f"image(s) under {limits['tiny_side']} px"),
        ("extreme_aspect", f"image(s) more than {limits['extreme_aspect']:g}:1"),
    ):
        if report[key]:
            out.append(f"{len(report[key])} {words}" + examples([i["path"] for i in report[key]]))
    if report["hidden_folders"]:
        out.append(f"{len(report['hidden_folders'])} hidden folder(s) ignored" + examples(report["hidden_folders"]))
    if report["class_name_twins"]:
        twins = "; ".join(" / ".join(t) for t in report["class_name_twins"])
        out.append(f"class names differing only in case or spaces: {twins}")
    if report["low_detail"]:
        out.append(f"{report['low_detail']} image(s) with almost no detail: only their exact copies are looked for")
    ratio = report["imbalance_ratio"]
    if ratio and ratio > 10:
        out.append(f"classes imbalanced {ratio}:1")
    return out
