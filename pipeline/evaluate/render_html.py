"""A self-contained HTML report: the tables plus inline SVG figures; no scripts, fonts or files fetched."""

from __future__ import annotations

import datetime as dt
from html import escape
from pathlib import Path

from ..results import atomic_write_bytes
from . import plots
from .report import Report
from .table import Table, numeric_columns
from .tables import all_tables, statements

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; vertical-align: top; }
th { background: #f3f3f3; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
caption { caption-side: top; text-align: left; color: #555; padding-bottom: 0.3em; }
figure { margin: 1em 0; } figure svg { max-width: 100%; height: auto; }
figcaption { color: #555; font-size: 0.9em; }
.note { color: #8a5300; } .missing { color: #777; font-style: italic; }
"""


def _table_html(t: Table) -> str:
    numeric = numeric_columns(t)
    head = "".join(f"<th>{escape(h)}</th>" for h in t.headers)
    body = []
    for row in t.rows:
        cells = "".join(
            f'<td class="num">{escape(c)}</td>' if num else f"<td>{escape(c)}</td>" for c, num in zip(row, numeric)
        )
        body.append(f"<tr>{cells}</tr>")
    caption = f"<caption>{escape(t.caption)}</caption>" if t.caption else ""
    notes = "".join(f'<p class="note">note: {escape(n)}</p>' for n in t.notes)
    return (
        f'<section id="sec-{escape(t.key)}"><h2>{escape(t.title)}</h2>'
        f'<table id="table-{escape(t.key)}" class="report-table">{caption}<thead><tr>{head}</tr></thead>'
        f'<tbody>{"".join(body)}</tbody></table>{notes}</section>'
    )


def _figure_html(key: str, svg: str | None, caption: str, missing: str) -> str:
    if svg is None:
        return f'<figure id="fig-{key}" class="missing-figure"><p class="missing">{escape(missing)}</p></figure>'
    return f'<figure id="fig-{key}" class="report-figure">{svg}<figcaption>{escape(caption)}</figcaption></figure>'


def render_html(report: Report, *, title: str | None = None) -> str:
    names = ", ".join(r.name for r in report.runs)
    title = title or f"transcribe-batch eval — {names}"
    tables = all_tables(report)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f"<p>Generated {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC · normalizer "
        f"<code>{escape(report.normalizer)}</code> · corpus WER = Σ word edits / Σ reference words.</p>",
    ]
    notes = statements(report)
    if notes:
        parts.append('<section id="sec-notes"><h2>Notes</h2><ul>')
        parts += [f'<li class="note">{escape(n)}</li>' for n in notes]
        parts.append("</ul></section>")
    by_key = {t.key: t for t in tables}
    for key in ("runs", "accuracy", "wer-by-duration"):
        if key in by_key:
            parts.append(_table_html(by_key.pop(key)))
    parts.append('<section id="sec-figures"><h2>Figures</h2>')
    parts.append(_figure_html("wer-by-duration", plots.wer_by_duration(report),
                              "Corpus WER (all rows, failed = deletions) per utterance-duration bucket.",
                              "WER by duration: no scored rows (no references), nothing to draw."))
    parts.append(_figure_html("confidence-calibration", plots.confidence_calibration(report),
                              "Confidence calibration on the successful rows with a reference: WER per confidence "
                              "bucket, and what `export --min-confidence` keeps at each threshold.",
                              "Confidence calibration: no run has both confidence values and references."))
    parts.append(_figure_html("latency-histogram", plots.latency_histogram(report),
                              "Per-utterance device latency (total_s) of successful rows.",
                              "Latency histogram: no successful row has a latency."))
    for i, run in enumerate(report.runs):
        parts.append(_figure_html(f"timeline-{i}", plots.device_timeline(run),
                                  f"{run.name}: when each device was busy.",
                                  f"Timeline of {run.name}: no start/finish times recorded."))
    parts.append("</section>")
    parts += [_table_html(t) for t in by_key.values()]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(report: Report, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, render_html(report).encode("utf-8"))
    return path
