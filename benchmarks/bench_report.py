"""Aggregation of benchmark records into the Markdown table and the PNG chart."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from bench_common import IPYKERNEL, MAX_MESSAGE_CHARS, OURS, SHORT, Workload

Record = dict[str, Any]
Row = dict[str, Any]


def _median(values: list[float | int | None]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return statistics.median(vals) if vals else None


def _status_text(recs: list[Record]) -> str:
    if not recs:
        return "not run"
    counts = Counter(r["status"] for r in recs)
    return ", ".join(f"{n}x {s}" if n > 1 or len(recs) > 1 else s for s, n in counts.items())


def _module_summary(recs: list[Record], w: Workload) -> dict[str, Any]:
    values = [r["value"] for r in recs if r.get("value") is not None]
    out: dict[str, Any] = {
        "runs": len(recs),
        "ok_runs": sum(r["status"] == "ok" for r in recs),
        "status": _status_text(recs),
        "values": values,
        "median": _median(values),
        "e2e": _median([r.get("e2e") for r in recs]),
        "write_s": _median([(r["sender"] or {}).get("write_seconds") for r in recs]),
        "msgs": _median([r.get("msgs") for r in recs]),
        "max_msg_chars": max((r.get("max_msg_chars") or 0 for r in recs), default=0),
        "peak_rss": _median([r.get("peak_rss_mib") for r in recs]),
        "baseline_rss": _median([r.get("baseline_rss_mib") for r in recs]),
        "problems": sorted({p for r in recs for p in r.get("problems", [])}),
        "crash_reasons": sorted({r["crash_reason"] for r in recs if r.get("crash_reason")}),
    }
    if w.name == "latency":
        out["tick_msgs"] = _median([r.get("tick_msgs") for r in recs])
        lats = [x for r in recs for x in r.get("latencies", [])]
        out["lat_min"] = min(lats) if lats else None
        out["lat_max"] = max(lats) if lats else None
        out["tick_seconds"] = _median([r.get("tick_seconds") for r in recs])
    if w.name == "short_threads":
        ex = [(r["sender"] or {}).get("extra", {}) or {} for r in recs]
        rcv = [r["receiver"] or {} for r in recs]
        out["completed"] = [e.get("completed") for e in ex]
        out["max_fds"] = max((e.get("max_fds") or 0 for e in ex), default=0)
        out["thread_errors"] = [e.get("thread_errors") for e in ex]
        out["first_error"] = next((e["first_error"] for e in ex if e.get("first_error")), "")
        out["delivered"] = [r.get("verify", "") for r in rcv]
        out["delivered_chars"] = [r.get("chars") for r in rcv]
    if w.name == "fork":
        ex = [(r["sender"] or {}).get("extra", {}) or {} for r in recs]
        out["child"] = sorted({str(e.get("child")) for e in ex})
    return out


def summarize(records: list[Record], workloads: list[Workload], modules: list[str]) -> list[Row]:
    rows: list[Row] = []
    for w in workloads:
        per = {
            m: _module_summary(
                [r for r in records if r["workload"] == w.name and r["module"] == m], w
            )
            for m in modules
        }
        ipy, ours = per.get(IPYKERNEL), per.get(OURS)
        ratio = None
        if ipy and ours and ipy["median"] and ours["median"] is not None:
            ratio = ours["median"] / ipy["median"]
        met: bool | None = None
        ours_clean = bool(ours) and ours["runs"] > 0 and ours["ok_runs"] == ours["runs"]
        if ours:
            if w.name == "latency":
                met = ours_clean and ours["median"] is not None and ours["median"] <= w.target
            elif w.name == "short_threads":
                met = ours_clean
            elif w.name == "big_writes":
                met = (
                    ours_clean
                    and ratio is not None
                    and ratio <= w.target
                    and ours["max_msg_chars"] <= MAX_MESSAGE_CHARS
                )
            else:
                met = ours_clean and ratio is not None and ratio <= w.target
        params = next((r["params"] for r in records if r["workload"] == w.name), w.full)
        rows.append({"workload": w, "per": per, "ratio": ratio, "met": met, "params": params})
    return rows


def _fmt_value(v: float | None, metric: str) -> str:
    if v is None:
        return "n/a"
    if metric == "latency":
        return f"{v * 1000:.1f} ms"
    if metric == "rss":
        return f"{v:.0f} MiB"
    if v < 1:
        return f"{v * 1000:.0f} ms"
    return f"{v:.2f} s"


def _cell(s: dict[str, Any] | None, metric: str) -> str:
    if s is None:
        return "not run"
    text = _fmt_value(s["median"], metric)
    if s["ok_runs"] < s["runs"]:
        bad = [x for x in s["status"].split(", ") if not x.endswith(" ok") and x != "ok"]
        text = f"{text} ({'; '.join(bad)})" if s["median"] is not None else "; ".join(bad)
    return text


def _notes(row: Row) -> str:
    w: Workload = row["workload"]
    per = row["per"]
    ipy, ours = per.get(IPYKERNEL), per.get(OURS)
    notes: list[str] = []

    def both(label: str, key: str, fmt: str = "{:.0f}") -> None:
        vals = []
        for m, s in ((IPYKERNEL, ipy), (OURS, ours)):
            if s and s.get(key) is not None:
                vals.append(f"{SHORT[m]} {fmt.format(s[key])}")
        if vals:
            notes.append(f"{label}: " + ", ".join(vals))

    p = row["params"]
    notes.append(
        "sizes: "
        + ", ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in p.items())
    )
    if w.name in ("small_writes", "print", "write_flush", "threads_parents", "fd_capture"):
        both("messages", "msgs")
    if w.name == "fork":
        both("messages", "msgs")
        notes.append(f"lines printed by the child: {p['lines']}")
    if w.name == "latency":
        both("sustained-output messages", "tick_msgs")
        notes.append(
            f"expected about {p['ticks'] * p['tick_period'] / 0.2 + 1:.0f} "
            f"(one per 0.2 s flush_interval + first)"
        )
    if w.name == "short_threads":
        for m, s in ((IPYKERNEL, ipy), (OURS, ours)):
            if not s:
                continue
            completed = "/".join(str(x) for x in s["completed"])
            delivered = "; ".join(sorted({str(x) for x in s["delivered"]}))
            text = f"{SHORT[m]}: {s['status']}; threads completed {completed} of {p['n']}"
            text += f"; {delivered}; max open fds {s['max_fds']}"
            if s["crash_reasons"]:
                text += f"; {s['crash_reasons'][0][:100]}"
            elif s["first_error"]:
                text += f"; first thread error: {s['first_error'].strip().splitlines()[-1][:100]}"
            notes.append(text)
    if w.name == "big_writes":
        both("max message", "max_msg_chars", "{:,} chars")
        both("end-to-end", "e2e", "{:.2f} s")
    if w.name == "threads_parents":
        for m, s in ((IPYKERNEL, ipy), (OURS, ours)):
            if s and s["problems"]:
                notes.append(f"{SHORT[m]}: {s['problems'][0][:200]}")
    return "; ".join(notes)


def write_markdown(
    path: Path,
    rows: list[Row],
    records: list[Record],
    meta: dict[str, Any],
    workloads: list[Workload],
) -> str:
    out: list[str] = []
    out.append("# Benchmarks: `iostream` vs `ipykernel.iostream`\n")
    versions = ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items())
    out.append(
        f"Generated by `python benchmarks/run.py` ({meta['mode']} mode, "
        f"{meta['repeat']} repetition(s) requested, suite took {meta['elapsed_s']:.0f} s) "
        f"on {meta['date']}: Python {meta['python']}, {meta['cpus']} CPUs, {versions}.\n"
    )
    if meta["mode"] != "full":
        out.append("**Quick mode: reduced sizes, not representative of the targets.**\n")
    if meta.get("keep_write_order"):
        out.append(
            "**Ours ran with `OutStream.keep_write_order = True` (output kept in the "
            "order written, as `python -m iostream kernel` runs): ipykernel has no such "
            "thing.**\n"
        )
    for m, why in meta.get("unavailable", {}).items():
        out.append(f"**Module `{m}` was not importable ({why}); it was not measured.**\n")
    out.append(
        "Each measurement is a fresh sender process (XPUB on tcp://127.0.0.1, "
        "`IOPubThread` + `OutStream`) and a separate receiver process (SUB + keyed "
        "`Session`, every message deserialized). Times are end to end: from the first "
        "write until the receiver has every character. Medians over the repetitions; "
        "ratio = ours / ipykernel (lower is better).\n"
    )
    out.append(
        "The chart shows each ratio (log scale, green where the target is met); "
        "the profiling findings are in [performance.md](performance.md).\n"
    )
    out.append("![ratios ours / ipykernel](benchmarks.png)\n")
    out.append(
        "| # | Workload | Metric | ipykernel (median) | ours (median) | ratio | target | met? |"
    )
    out.append("|---|---|---|---|---|---|---|---|")
    metric_names = {"e2e": "end-to-end time", "latency": "latency", "rss": "peak RSS"}
    for row in rows:
        w: Workload = row["workload"]
        per = row["per"]
        ratio = row["ratio"]
        met = row["met"]
        out.append(
            f"| {w.number} | {w.title} | {metric_names[w.metric]} "
            f"| {_cell(per.get(IPYKERNEL), w.metric)} | {_cell(per.get(OURS), w.metric)} "
            f"| {'n/a' if ratio is None else f'{ratio:.3f}'} | {w.target_text} "
            f"| {'n/a' if met is None else ('yes' if met else '**no**')} |"
        )
    out.append("")
    out.append("## Notes per workload\n")
    for row in rows:
        notes = _notes(row)
        if notes:
            out.append(f"- **{row['workload'].number}. {row['workload'].title}**: {notes}")
    out.append("")
    out.append("## Details\n")
    out.append(
        "| # | module | runs | status | metric values | end-to-end | writer time "
        "| messages | max message (chars) | peak RSS | RSS before workload |"
    )
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        w = row["workload"]
        for m, s in row["per"].items():
            vals = ", ".join(_fmt_value(v, w.metric) for v in s["values"]) or "n/a"
            out.append(
                f"| {w.number} | {SHORT.get(m, m)} | {s['runs']} | {s['status']} | {vals} "
                f"| {_fmt_value(s['e2e'], 'e2e')} | {_fmt_value(s['write_s'], 'e2e')} "
                f"| {'n/a' if s['msgs'] is None else format(s['msgs'], '.0f')} "
                f"| {s['max_msg_chars']:,} "
                f"| {_fmt_value(s['peak_rss'], 'rss')} | {_fmt_value(s['baseline_rss'], 'rss')} |"
            )
    problems = [
        (row["workload"], m, s)
        for row in rows
        for m, s in row["per"].items()
        if s["problems"] or s["crash_reasons"]
    ]
    if problems:
        out.append("\n## Problems seen\n")
        for w, m, s in problems:
            items = s["crash_reasons"] + s["problems"]
            text = "; ".join(i.replace("|", "\\|")[:300] for i in items[:4])
            out.append(f"- {w.number}. {w.name}, {SHORT.get(m, m)}: {text}")
    out.append("")
    text = "\n".join(out) + "\n"
    path.write_text(text)
    return text


def _short_status(s: dict[str, Any] | None) -> str:
    if not s:
        return "n/a"
    if "Too many open files" in s["status"] or any(
        "Too many open files" in x for x in s["crash_reasons"]
    ):
        return "Too many open files"
    text = s["status"].split(" (")[0]
    return "all ok" if text in ("ok", f"{s['runs']}x ok") else text


def write_chart(path: Path, rows: list[Row], meta: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels: list[str] = []
    ratios: list[float] = []
    targets: list[float | None] = []
    colors: list[str] = []
    annotations: list[str] = []
    for row in rows:
        w: Workload = row["workload"]
        labels.append(f"{w.number}. {w.name}")
        ratio = row["ratio"]
        ipy = row["per"].get(IPYKERNEL)
        ours = row["per"].get(OURS)
        target: float | None = w.target
        if w.name == "latency":
            # absolute target (5 ms) shown as the equivalent ratio
            target = w.target / ipy["median"] if ipy and ipy["median"] else None
        if target is not None and math.isnan(target):
            target = None
        met = row["met"]
        if ratio is None:
            ratios.append(float("nan"))
            if w.name == "short_threads" and ours:
                annotations.append(f"ipykernel: {_short_status(ipy)}\nours: {_short_status(ours)}")
            else:
                annotations.append("n/a")
        else:
            ratios.append(ratio)
            annotations.append(f"{ratio:.3g}")
        targets.append(target)
        colors.append("tab:green" if met else ("tab:red" if met is False else "tab:gray"))

    fig, ax = plt.subplots(figsize=(11, 5.5))
    xs = list(range(len(labels)))
    finite = [r for r in ratios if not math.isnan(r)] + [t for t in targets if t]
    lo = min([*finite, 1.0]) / 3
    hi = max([*finite, 1.0]) * 3
    heights = [r if not math.isnan(r) else 0 for r in ratios]
    ax.bar(xs, heights, color=colors, width=0.6, zorder=2)
    for x, t in zip(xs, targets, strict=True):
        if t:
            ax.hlines(t, x - 0.4, x + 0.4, colors="black", linestyles="--", zorder=3)
    for x, r, a in zip(xs, ratios, annotations, strict=True):
        y = r * 1.1 if not math.isnan(r) else lo * 1.5
        ax.text(x, y, a, ha="center", va="bottom", fontsize=8, zorder=4)
    ax.axhline(1.0, color="gray", linewidth=0.8, zorder=1)
    ax.set_yscale("log")
    ax.set_ylim(lo, hi)
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, rotation=25, ha="right", fontsize=9)
    ax.set_ylabel("ratio ours / ipykernel (log scale, lower is better)")
    ax.set_title(
        f"iostream vs ipykernel.iostream ({meta['mode']} mode): "
        "bars = median ratio, dashed = target"
    )
    ax.grid(axis="y", which="both", alpha=0.3, zorder=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


__all__ = ["OURS", "summarize", "write_chart", "write_markdown"]
