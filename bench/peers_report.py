"""The figures of bench/peers.py: samples in, table rows, summary ratios and JSON out (pure).

Samples are kept raw, by metric and system, in the order they were taken:

    samples["first_reply"]["nebula"] == [{"a": 1.41, "b": 1.43}, {"a": None, "b": 1.40}, ...]

A sample is a number, or a dict of named parts: the two sides of a first reply ("a", "b"), or
the processes of a node ("agent", "wireguard-go"). A side that got no reply is None and counts
as a failure, never as a number. Each row of the table reduces one metric with the median.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

SYSTEMS: Final = ("meshctl", "nebula", "tinc")
TITLES: Final = {"meshctl": "meshctl", "nebula": "Nebula", "tinc": "tinc"}
SERVER: Final = {"meshctl": "relay", "nebula": "lighthouse", "tinc": "hub"}

Sample = float | None | dict[str, float | None]
Samples = dict[str, dict[str, list[Sample]]]

Kind = Literal["sides", "parts", "value", "ratio", "pair"]


@dataclass(frozen=True, slots=True)
class Row:
    key: str  # what --only names
    label: str
    kind: Kind
    metrics: tuple[str, ...]  # one, or two for "ratio" (numerator, denominator) and "pair"
    lower_is_better: bool = True
    decimals: int | None = None  # fixed decimals instead of `fmt`'s significant digits


ROWS: Final = (
    Row("first-reply", "daemon start -> first echo reply, two home NATs, one side pinging, s (median; a / b pings)",
        "sides", ("first_reply",)),
    Row("first-reply-both", "same, both sides pinging from the start, s", "sides", ("first_reply_both",)),
    Row("first-reply-relayed", "same, both pinging, direct path blocked: through relay / lighthouse / hub, s",
        "sides", ("first_reply_blocked",)),
    Row("new-peer", "new member approved (pushed, a told to sync) -> first echo reply, s (new / a pings)",
        "sides", ("new_peer",)),
    Row("idle-cpu", "idle CPU, % of a core per node", "parts", ("idle_cpu",)),
    Row("idle-cpu-ten", "idle CPU with --peers peers (10: b and 9 new), % of a core per node", "parts",
        ("idle_cpu_ten",)),
    Row("server-idle-cpu", "idle CPU of the relay / lighthouse / hub, % of a core", "value", ("server_idle_cpu",)),
    Row("rss-start", "RSS per node right after start, MiB", "parts", ("rss_start",)),
    Row("rss-idle", "RSS per node after the idle period, MiB", "parts", ("rss_idle",)),
    Row("rss-ten", "RSS per node with --peers peers, after that idle period, MiB", "parts", ("rss_ten",)),
    Row("throughput", "throughput direct, Mbit/s (iperf3 TCP, each way)", "value", ("throughput_direct",),
        lower_is_better=False),
    Row("throughput-relayed", "throughput relayed, Mbit/s", "value", ("throughput_relayed",), lower_is_better=False),
    Row("relayed-ratio", "relayed / direct", "ratio", ("throughput_relayed", "throughput_direct"),
        lower_is_better=False),
    Row("server-share", "bytes through the relay / lighthouse / hub per byte delivered: direct, relayed",
        "pair", ("share_direct", "share_relayed"), decimals=2),
    Row("relay-cpu", "relay / lighthouse / hub CPU per 100 Mbit/s relayed, % of a core", "value",
        ("server_cpu_per_100",)),
    Row("rss-throughput", "RSS per node after the throughput runs, MiB", "parts", ("rss_throughput",)),
)
ROW_KEYS: Final = tuple(r.key for r in ROWS)
# The rows the one-line summary compares (meshctl / peer).
SUMMARY: Final = (("first reply", "first-reply"), ("idle CPU", "idle-cpu"), ("RSS", "rss-start"),
                  ("throughput", "throughput"), ("relayed/direct", "relayed-ratio"),
                  ("relay CPU per 100 Mbit/s", "relay-cpu"))


@dataclass(frozen=True, slots=True)
class Cell:
    value: float | None  # what the row compares; None: not measured or every sample failed
    text: str
    detail: dict[str, Any] = field(default_factory=dict)


def record(samples: Samples, metric: str, system: str, sample: Sample) -> None:
    samples.setdefault(metric, {}).setdefault(system, []).append(sample)


def median_or_none(values: Sequence[float | None]) -> float | None:
    numbers = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(numbers) if numbers else None


def fmt(x: float | None, decimals: int | None = None) -> str:
    """Three significant digits at and above 1, two below (0.44, 0.0031), never an exponent; or
    fixed `decimals`."""
    if x is None or math.isnan(x):
        return "n/a"
    if decimals is not None:
        return f"{x:.{decimals}f}"
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:.0f}"
    digits = 2 - math.floor(math.log10(abs(x))) if abs(x) >= 1 else 1 - math.floor(math.log10(abs(x)))
    return f"{x:.{max(digits, 0)}f}"


def _parts_total(sample: Sample) -> float | None:
    if sample is None or isinstance(sample, float | int):
        return None if sample is None else float(sample)
    values = list(sample.values())
    if any(v is None for v in values):
        return None
    return float(sum(v for v in values if v is not None))


def _sides_cell(values: Sequence[Sample]) -> Cell:
    sides: dict[str, list[float | None]] = {}
    for sample in values:
        if isinstance(sample, dict):
            for side, v in sample.items():
                sides.setdefault(side, []).append(v)
    pooled = [v for vs in sides.values() for v in vs]
    value = median_or_none(pooled)
    failed = sum(1 for v in pooled if v is None)
    per_side = {side: median_or_none(vs) for side, vs in sides.items()}
    text = fmt(value)
    if len(per_side) > 1:
        text += " (" + " / ".join(fmt(v) for v in per_side.values()) + ")"
    if failed:
        text += f" [{failed} of {len(pooled)} no reply]"
    return Cell(value, text, {"by_side": per_side, "samples": len(pooled), "failed": failed})


def _parts_cell(values: Sequence[Sample]) -> Cell:
    totals = [_parts_total(s) for s in values]
    value = median_or_none(totals)
    parts: dict[str, list[float | None]] = {}
    for sample in values:
        if isinstance(sample, dict):
            for name, v in sample.items():
                parts.setdefault(name, []).append(v)
    per_part = {name: median_or_none(vs) for name, vs in parts.items()}
    text = fmt(value)
    if len(per_part) > 1:
        text += " (" + " + ".join(f"{name} {fmt(v)}" for name, v in per_part.items()) + ")"
    return Cell(value, text, {"parts": per_part, "samples": len(totals)})


def _value_cell(values: Sequence[Sample]) -> Cell:
    numbers = [v if isinstance(v, float | int) or v is None else _parts_total(v) for v in values]
    value = median_or_none(numbers)
    failed = sum(1 for v in numbers if v is None)
    text = fmt(value) + (f" [{failed} of {len(numbers)} failed]" if failed else "")
    return Cell(value, text, {"samples": len(numbers), "failed": failed})


def cell(row: Row, samples: Samples, system: str) -> Cell | None:
    """The row's figure for one system, or None when the run measured nothing for it."""
    series = [samples.get(m, {}).get(system) for m in row.metrics]
    if row.kind in ("sides", "parts", "value"):
        values = series[0]
        if not values:
            return None
        return {"sides": _sides_cell, "parts": _parts_cell, "value": _value_cell}[row.kind](values)
    first, second = (_value_cell(s) if s else None for s in series)
    if first is None or second is None:
        return None
    if row.kind == "ratio":
        value = (first.value / second.value if first.value is not None and second.value
                 else None)
        return Cell(value, fmt(value), {"numerator": first.value, "denominator": second.value})
    text = f"{fmt(first.value, row.decimals)} / {fmt(second.value, row.decimals)}"
    return Cell(None, text, {row.metrics[0]: first.value, row.metrics[1]: second.value})


def build_rows(samples: Samples, systems: Sequence[str] = SYSTEMS) -> list[tuple[Row, dict[str, Cell | None]]]:
    """The rows with at least one measured cell, in table order."""
    out = []
    for row in ROWS:
        cells = {s: cell(row, samples, s) for s in systems}
        if any(c is not None for c in cells.values()):
            out.append((row, cells))
    return out


def markdown_table(rows: Sequence[tuple[Row, Mapping[str, Cell | None]]], systems: Sequence[str] = SYSTEMS) -> str:
    lines = ["| measure | " + " | ".join(TITLES[s] for s in systems) + " |",
             "|---|" + "---|" * len(systems)]
    for row, cells in rows:
        texts = [c.text if c is not None else "-" for c in (cells[s] for s in systems)]
        lines.append(f"| {row.label} | " + " | ".join(texts) + " |")
    return "\n".join(lines)


def ratio(ours: float | None, theirs: float | None) -> float | None:
    if ours is None or theirs is None or theirs == 0:
        return None
    return ours / theirs


def summary(rows: Sequence[tuple[Row, Mapping[str, Cell | None]]]) -> dict[str, dict[str, float | None]]:
    """meshctl / peer for the summary's rows: {"nebula": {"first reply": 0.97, ...}, "tinc": {...}}."""
    by_key = {row.key: cells for row, cells in rows}
    out: dict[str, dict[str, float | None]] = {}
    for peer in SYSTEMS[1:]:
        out[peer] = {}
        for name, key in SUMMARY:
            cells = by_key.get(key)
            if cells is None:
                continue
            ours, theirs = cells.get("meshctl"), cells.get(peer)
            out[peer][name] = ratio(ours.value if ours else None, theirs.value if theirs else None)
    return out


def summary_line(ratios: Mapping[str, Mapping[str, float | None]]) -> str:
    """One line: 'meshctl/Nebula: first reply 0.97, ... | meshctl/tinc: ...' (time, CPU and memory:
    below 1 is better for meshctl; throughput and relayed/direct: above 1)."""
    parts = []
    for peer, figures in ratios.items():
        if figures:
            parts.append(f"meshctl/{TITLES[peer]}: " + ", ".join(f"{name} {fmt(v)}" for name, v in figures.items()))
    return " | ".join(parts)


def to_json(samples: Samples, rows: Sequence[tuple[Row, Mapping[str, Cell | None]]],
            meta: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "meta": dict(meta),
        "rows": [{"key": row.key, "label": row.label,
                  "cells": {s: (None if c is None else {"value": c.value, "text": c.text, **c.detail})
                            for s, c in cells.items()}}
                 for row, cells in rows],
        "summary": summary(rows),
        "samples": samples,
    }
