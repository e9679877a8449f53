"""The device run's results: one record, written out as ``gpu.json`` and ``gpu.md`` whenever a
figure is added, so that whatever stops the run leaves every figure measured before it.

A *row* is one timed request (per stage, end to end, peak memory); it is printed as one line the
moment it exists. Other figures (a decode chunk, a compile time, a memory plan) are *facts*,
printed and written the same way. A configuration's summary (median of its rows) is derived
from its rows each time one is added. The files are replaced atomically, with the stopping
signals held back while they are written.
"""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
from pathlib import Path
from typing import Any

TIMES = ("first_frame", "video", "decode", "export", "total")
# what may stop a run part-way: the operator (SIGINT), the device's time limit (SIGTERM) and the
# run's own budget (SIGALRM)
STOPPING = {signal.SIGTERM, signal.SIGINT, signal.SIGALRM}


def gib(n_bytes: float) -> float | None:
    return None if math.isnan(n_bytes) else round(n_bytes / 2**30, 3)


class Record:
    """Everything one call measured, and what happened to each of its steps."""

    def __init__(self, out: Path, meta: dict[str, Any]) -> None:
        self.out = out
        self.data: dict[str, Any] = {
            "meta": meta,
            "preflight": None,
            # step name -> status (pending, done, failed, skipped, interrupted), seconds, why
            "steps": {},
            "rows": [],
            "configs": {},  # name -> the median of its rows, peak, U-Net TFLOP/s, deviations
            "facts": {},  # section -> key -> fields
            "stopped": None,  # what ended the run early: SIGTERM, SIGINT or the budget
        }
        out.mkdir(parents=True, exist_ok=True)

    # -- steps -------------------------------------------------------------------------------

    def plan(self, names: list[str]) -> None:
        for name in names:
            self.data["steps"][name] = {"status": "pending", "seconds": None, "why": None}
        self.save()

    def step(self, name: str, status: str, seconds: float | None = None, why: str = "") -> None:
        entry = self.data["steps"][name]
        entry.update(status=status, why=why or None)
        if seconds is not None:
            entry["seconds"] = round(seconds, 2)
        tail = f" ({why})" if why else ""
        took = f" in {seconds:.1f} s" if seconds is not None else ""
        print(f"step {name}: {status}{took}{tail}", flush=True)
        self.save()

    # -- figures -----------------------------------------------------------------------------

    def row(self, config: str, times: dict[str, float], peak_bytes: float, **extra: Any) -> None:
        """One timed request of ``config``: printed, added, its configuration summarised."""
        runs = [r for r in self.data["rows"] if r["config"] == config]
        row = {"config": config, "run": len(runs) + 1}
        row |= {f"{k}_s": round(times[k], 4) for k in TIMES}
        row |= {"peak_gib": gib(peak_bytes), **extra}
        self.data["rows"].append(row)
        runs.append(row)
        summary = self.config(config)
        summary["runs"] = len(runs)
        summary["times_s"] = {
            k: round(statistics.median(r[f"{k}_s"] for r in runs), 4) for k in TIMES
        }
        peaks = [r["peak_gib"] for r in runs if r["peak_gib"] is not None]
        summary["peak_gib"] = max(peaks) if peaks else None
        flops = summary.get("unet_tflop")
        video_s = summary["times_s"]["video"]
        summary["unet_tflops_per_s"] = round(flops / video_s, 4) if flops and video_s else None
        stages = "  ".join(f"{k} {times[k]:.3f}" for k in TIMES)
        peak = f", peak {row['peak_gib']:.2f} GiB" if row["peak_gib"] is not None else ""
        print(f"row {config} #{row['run']}: {stages} s{peak}", flush=True)
        self.save()

    def config(self, name: str) -> dict[str, Any]:
        """A configuration's summary (created empty), for fields beside its rows' medians."""
        configs: dict[str, dict[str, Any]] = self.data["configs"]
        empty = {"runs": 0, "times_s": None, "peak_gib": None, "unet_tflops_per_s": None}
        return configs.setdefault(name, empty)

    def fact(self, section: str, key: str, **fields: Any) -> None:
        """A figure that is not a timed request: printed, added (merged into earlier fields)."""
        self.data["facts"].setdefault(section, {}).setdefault(key, {}).update(fields)
        shown = ", ".join(f"{k} {_f(v)}" for k, v in fields.items())
        print(f"fact {section} {key}: {shown}", flush=True)
        self.save()

    # -- output ------------------------------------------------------------------------------

    def save(self) -> None:
        """Rewrite gpu.json and gpu.md, each replaced whole; no stopping signal in between."""
        held = signal.pthread_sigmask(signal.SIG_BLOCK, STOPPING)
        try:
            for name, text in (
                ("gpu.json", json.dumps(self.data, indent=1)),
                ("gpu.md", markdown(self.data)),
            ):
                part = self.out / f".{name}.part"
                part.write_text(text)
                os.replace(part, self.out / name)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _f(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} {_f(v, digits)}" for k, v in value.items()) + "}"
    return str(value)


def markdown(data: dict[str, Any]) -> str:
    meta = data["meta"]
    lines = [
        f"# bench/gpu.py --call {meta.get('call')}: {meta.get('models')} models, "
        f"{meta.get('size')}, {meta.get('steps')} steps",
        "",
        f"{meta.get('gpu') or meta.get('device')}, {meta.get('dtype')}, torch {meta.get('torch')}"
        f", median of {meta.get('repeats')}",
    ]
    if data["preflight"]:
        lines += ["", f"preflight: {data['preflight'].get('line')}"]
    if data["stopped"]:
        lines += ["", f"**stopped early: {data['stopped']}**"]
    lines += [
        "",
        "| configuration | runs | first frame s | video s | decode s | export s | total s "
        "| peak GiB | U-Net TFLOP/s | deviation (levels of 255): max / mean |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, c in data["configs"].items():
        t = c["times_s"] or dict.fromkeys(TIMES)
        devs = c.get("deviations", {}).items()
        shown = "; ".join(f"against {k}: {d['max']} / {d['mean']:.4f}" for k, d in devs)
        lines.append(
            f"| {name} | {c['runs']} | {_f(t['first_frame'])} | {_f(t['video'])} "
            f"| {_f(t['decode'])} | {_f(t['export'])} | {_f(t['total'])} "
            f"| {_f(c['peak_gib'], 2)} | {_f(c['unet_tflops_per_s'], 1)} | {shown or '-'} |"
        )
    for section, entries in data["facts"].items():
        lines += ["", f"| {section} | figures |", "| --- | --- |"]
        lines += [f"| {key} | {_f(fields)} |" for key, fields in entries.items()]
    lines += ["", "| step | status | seconds | why |", "| --- | --- | --- | --- |"]
    for name, s in data["steps"].items():
        lines.append(f"| {name} | {s['status']} | {_f(s['seconds'], 1)} | {_f(s['why'])} |")
    return "\n".join(lines) + "\n"
