"""Figures for the HTML report, drawn with matplotlib and returned as inline SVG text (no files, no network)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # headless; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .report import Report, RunReport, buckets_of  # noqa: E402
from .speed import device_labels  # noqa: E402

TIMELINE_MAX_BARS = 4000  # above this, the timeline shows each device's busy share per time bin instead of bars

plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "transcribe-batch", "font.size": 9})


def _svg(fig) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # drop the XML declaration and DOCTYPE: the SVG is inlined in HTML


def wer_by_duration(report: Report) -> str | None:
    """Corpus WER (all rows) per utterance-duration bucket, one bar per run; None when nothing is scored."""
    series = [(run.name, buckets_of(run)) for run in report.runs]
    if not any(b.ref_words for _, buckets in series for b in buckets):
        return None
    used = [k for k in range(len(series[0][1])) if any(buckets[k].ref_words for _, buckets in series)]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    width = 0.8 / len(series)
    x = np.arange(len(used))
    for j, (name, buckets) in enumerate(series):
        values = [100 * buckets[k].wer if buckets[k].wer is not None else np.nan for k in used]
        bars = ax.bar(x + (j - (len(series) - 1) / 2) * width, values, width, label=name)
        for bar, k in zip(bars, used):
            if buckets[k].ref_words:
                ax.annotate(f"{buckets[k].n_scored}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, [series[0][1][k].label for k in used])
    ax.set_xlabel("utterance duration")
    ax.set_ylabel("WER % (all rows)")
    ax.set_title("WER by duration (labels: utterances per bucket)")
    if len(series) > 1:
        ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return _svg(fig)


def latency_histogram(report: Report) -> str | None:
    """Per-utterance latency (total_s of successful rows), one step histogram per run."""
    data = []
    for run in report.runs:
        values = [v for v, s in zip(run.run.col("total_s"), run.run.col("status")) if s == "ok" and v is not None]
        if values:
            data.append((run.name, np.asarray(values, dtype=float)))
    if not data:
        return None
    everything = np.concatenate([v for _, v in data])
    lo, hi = float(everything.min()), float(everything.max())
    bins = np.linspace(lo, hi if hi > lo else lo + 1e-3, 31)
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for name, values in data:
        _, _, patches = ax.hist(values, bins=bins, histtype="step", linewidth=1.5, label=f"{name} (n={len(values)})")
        for q, style in ((50, "--"), (90, ":")):
            ax.axvline(np.percentile(values, q), linestyle=style, linewidth=0.8, color=patches[0].get_edgecolor())
    ax.set_xlabel("latency per utterance, s (dashed p50, dotted p90)")
    ax.set_ylabel("utterances")
    ax.set_title("Latency histogram")
    ax.legend()
    ax.grid(alpha=0.3)
    return _svg(fig)


def device_timeline(run: RunReport) -> str | None:
    """When each device was busy during the run: one bar per utterance (red: failed), or busy share per time bin."""
    r = run.run
    labels = device_labels(r)
    starts, ends, status = r.col("started_at"), r.col("finished_at"), r.col("status")
    rows = [i for i in range(r.n) if labels[i] is not None and starts[i] is not None and ends[i] is not None]
    if not rows:
        return None
    t0 = min(starts[i] for i in rows)
    devices = sorted({labels[i] for i in rows}, key=lambda s: (len(s), s))
    lane = {d: k for k, d in enumerate(devices)}
    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.45 * len(devices)))
    if len(rows) <= TIMELINE_MAX_BARS:
        for ok in (True, False):
            for d in devices:
                spans = [(starts[i] - t0, max(ends[i] - starts[i], 1e-6)) for i in rows
                         if labels[i] == d and (status[i] == "ok") == ok]
                if spans:
                    ax.broken_barh(spans, (lane[d] - 0.4, 0.8), facecolors="tab:blue" if ok else "tab:red",
                                   edgecolor="white", linewidth=0.2)
        ax.set_title(f"Per-device timeline — {run.name} (blue ok, red failed)")
    else:
        t_end = max(ends[i] for i in rows) - t0
        edges = np.linspace(0.0, t_end, 201)
        busy = np.zeros((len(devices), 200))
        for i in rows:
            a, b = starts[i] - t0, ends[i] - t0
            lo, hi = np.searchsorted(edges, a, "right") - 1, np.searchsorted(edges, b, "left")
            for k in range(max(lo, 0), min(hi, 200)):
                busy[lane[labels[i]], k] += min(b, edges[k + 1]) - max(a, edges[k])
        busy /= np.diff(edges)[None, :]
        image = ax.imshow(np.clip(busy, 0, 1), aspect="auto", extent=(0, t_end, len(devices) - 0.5, -0.5),
                          cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        fig.colorbar(image, ax=ax, label="busy share")
        ax.set_title(f"Per-device timeline — {run.name} (busy share per time bin)")
    ax.set_yticks(range(len(devices)), [f"device {d}" for d in devices])
    ax.set_ylim(len(devices) - 0.5, -0.5)
    ax.set_xlabel("seconds since the first utterance started")
    ax.grid(axis="x", alpha=0.3)
    return _svg(fig)



def confidence_calibration(report: Report) -> str | None:
    """Three panels: corpus WER per confidence bucket (one bar per run); per threshold, the share of utterances
    (solid) and of hours (dashed) kept; per threshold, the WER of what is kept. None when no run has a calibration."""
    from .calibration import calibration_of

    series = [(run.name, cal) for run in report.runs if (cal := calibration_of(run)).available]
    if not series:
        return None
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(12, 3.4))
    used = [k for k in range(len(series[0][1].buckets)) if any(cal.buckets[k].n for _, cal in series)]
    width = 0.8 / len(series)
    x = np.arange(len(used))
    for j, (name, cal) in enumerate(series):
        values = [100 * cal.buckets[k].wer if cal.buckets[k].wer is not None else np.nan for k in used]
        bars = left.bar(x + (j - (len(series) - 1) / 2) * width, values, width, label=name, color=f"C{j}")
        for bar, k in zip(bars, used):
            if cal.buckets[k].n:
                left.annotate(f"{cal.buckets[k].n}", (bar.get_x() + bar.get_width() / 2, np.nan_to_num(bar.get_height())),
                              ha="center", va="bottom", fontsize=7)
    left.set_xticks(x, [series[0][1].buckets[k].label for k in used], rotation=30)
    left.set_xlabel("confidence")
    left.set_ylabel("WER % (successful rows)")
    left.set_title("WER by confidence (labels: utterances)")
    left.grid(axis="y", alpha=0.3)
    for j, (name, cal) in enumerate(series):
        t = [row.threshold for row in cal.thresholds]
        middle.plot(t, [100 * (row.share_kept or 0) for row in cal.thresholds], "-", marker=".", color=f"C{j}",
                    label=f"{name}: utterances")
        middle.plot(t, [100 * (row.share_hours_kept or 0) for row in cal.thresholds], "--", color=f"C{j}",
                    label=f"{name}: hours")
        right.plot(t, [100 * row.wer_kept if row.wer_kept is not None else np.nan for row in cal.thresholds], "-",
                   marker=".", color=f"C{j}", label=name)
    middle.set_xlabel("keep if confidence ≥")
    middle.set_ylabel("% kept")
    middle.set_ylim(0, 105)
    middle.set_title("What a threshold keeps")
    middle.legend(fontsize=7, loc="lower left")
    middle.grid(alpha=0.3)
    right.set_xlabel("keep if confidence ≥")
    right.set_ylabel("WER % of the kept rows")
    right.set_ylim(bottom=0)
    right.set_title("WER of what a threshold keeps")
    if len(series) > 1:
        right.legend(fontsize=7)
        left.legend(fontsize=7)
    right.grid(alpha=0.3)
    fig.tight_layout()
    return _svg(fig)
