"""The report as plain tables (`table.Table`: title, headers, rows of strings): one layout shared by terminal,
markdown and HTML. The calibration's tables come from calibration_tables.py."""

from __future__ import annotations

from .calibration_tables import calibration_notes, calibration_tables
from .report import Report, RunReport, buckets_of
from .speed import DeviceSpeed
from .table import NA, Table, hours, num, pct


def runs_table(report: Report) -> Table:
    """One column per run, one row per attribute (like the metric tables): many runs or long folder paths and
    prompts wrap inside their own cell instead of squeezing every column at 80 characters."""
    keys = sorted({k for r in report.runs for k in r.identity()})
    rows = [["folder", *[str(r.run.path) for r in report.runs]], ["rows", *[str(r.run.n) for r in report.runs]]]
    rows += [[k, *[str(r.identity().get(k, NA)) for r in report.runs]] for k in keys]
    return Table("Runs", ["", *[r.name for r in report.runs]], rows, "", "runs")


def accuracy_table(report: Report) -> Table:
    runs = report.runs
    rows: list[list[str]] = []

    def add(label: str, values: list[str]) -> None:
        rows.append([label, *values])

    s = [r.accuracy.summary() for r in runs]
    add("n samples", [str(x["n_samples"]) for x in s])
    add("n successful", [str(x["n_successful"]) for x in s])
    add("n failed", [str(x["n_failed"]) for x in s])
    add("n scored (non-empty reference)", [str(x["n_scored"]) for x in s])
    add("WER % (all rows; failed = deletions)", [pct(x["wer"]) for x in s])
    add("WER % (successful rows only)", [pct(x["wer_successful"]) for x in s])
    add("substitutions / deletions / insertions", [f"{x['substitutions']} / {x['deletions']} / {x['insertions']}" for x in s])
    add("reference words", [str(x["ref_words"]) for x in s])
    add("CER % (all rows)", [pct(x["cer"]) for x in s])
    add("CER % (successful rows only)", [pct(x["cer_successful"]) for x in s])
    add("exact-match % (successful rows)", [pct(x["exact_match"]) for x in s])
    add("complete-error % (successful rows)", [pct(x["complete_error"]) for x in s])
    add("exact-match % (all rows)", [pct(x["exact_match_all"]) for x in s])
    add("complete-error % (all rows)", [pct(x["complete_error_all"]) for x in s])
    if report.n_common is not None and len(runs) > 1:
        caption = f"Accuracy on the {report.n_common} utterances common to all runs, normalizer: {report.normalizer}"
    else:
        caption = f"Accuracy, normalizer: {report.normalizer}"
    notes = [f"{r.name}: {note}" for r in runs for note in r.accuracy.notes]
    return Table("Accuracy", ["metric", *[r.name for r in runs]], rows, caption, "accuracy", notes)


def duration_table(report: Report) -> Table | None:
    per_run = [buckets_of(r) for r in report.runs]
    used = [k for k in range(len(per_run[0])) if any(b[k].n_scored for b in per_run)]
    if not used:
        return None
    rows = [[per_run[0][k].label, *[f"{pct(b[k].wer)} ({b[k].n_scored})" for b in per_run]] for k in used]
    return Table("WER by duration", ["duration", *[f"{r.name} WER % (n)" for r in report.runs]], rows,
                 "corpus WER (all rows) per utterance-duration bucket; n = scored utterances", "wer-by-duration")


def _dist_cell(d) -> str:
    if d.n == 0:
        return NA
    return f"{num(d.mean)} / {num(d.p50)} / {num(d.p90)} / {num(d.p99)}"


def speed_table(report: Report) -> Table:
    runs = report.runs
    rows: list[list[str]] = []
    o = [r.speed.overall for r in runs]
    f = [r.speed.failures for r in runs]
    rows.append(["audio hours (successful rows)", *[hours(x.audio_s) for x in o]])
    rows.append(["wall time s (first start → last finish)", *[num(x.wall_s, 4) for x in o]])
    rows.append(["RTFx (Σ audio / Σ device time)", *[num(x.rtfx_device) for x in o]])
    rows.append(["RTFx (Σ audio / wall)", *[num(x.rtfx_wall) for x in o]])
    rows.append(["job wall time s (run.json, incl. start-up)", *[num(r.speed.job_wall_s, 4) for r in runs]])
    rows.append(["RTFx (Σ audio / job wall)", *[num(r.speed.rtfx_job) for r in runs]])
    rows.append(["devices", *[str(len(r.speed.per_device)) for r in runs]])
    for column, label in (("ttft_s", "TTFT s"), ("tokens_per_s", "decode tokens/s"), ("total_s", "latency s"),
                          ("rtf", "RTF")):
        rows.append([f"{label} mean / p50 / p90 / p99", *[_dist_cell(x.dists[column]) for x in o]])
    rows.append(["rows retried (recovered)", *[f"{x.n_retried} ({x.n_recovered})" for x in f]])
    rows.append(["extra attempts", *[str(x.extra_attempts) for x in f]])
    rows.append(["finish reasons", *[", ".join(f"{k} {v}" for k, v in x.finish_reasons.items()) or NA for x in f]])
    notes = [f"{r.name}: {note}" for r in runs for note in r.speed.notes]
    caption = "Speed over each whole run (successful rows for the distributions)"
    return Table("Speed", ["metric", *[r.name for r in runs]], rows, caption, "speed", notes)


def device_table(run: RunReport) -> Table:
    def row(d: DeviceSpeed) -> list[str]:
        return [
            d.device,
            str(d.n_rows),
            str(d.n_successful),
            hours(d.audio_s),
            num(d.rtfx_device),
            num(d.rtfx_wall),
            num(d.dists["ttft_s"].p50),
            num(d.dists["tokens_per_s"].mean),
            f"{num(d.dists['total_s'].p50)} / {num(d.dists['total_s'].p90)} / {num(d.dists['total_s'].p99)}",
        ]

    rows = [row(d) for d in run.speed.per_device] + [row(run.speed.overall)]
    headers = ["device", "rows", "ok", "audio h", "RTFx device", "RTFx wall", "TTFT p50 s", "tokens/s mean",
               "latency p50/p90/p99 s"]
    return Table(f"Per device — {run.name}", headers, rows, "", f"devices-{run.name}")


def failures_table(run: RunReport) -> Table | None:
    by_class = run.speed.failures.by_class
    if not by_class:
        return None
    rows = [[c["error_class"], str(c["count"]), c["example"]] for c in by_class]
    return Table(f"Failures by class — {run.name}", ["error class", "rows", "example message"], rows, "",
                 f"failures-{run.name}")


def _text(value: str | None) -> str:
    return NA if value is None else (value or "(empty)")


def comparison_table(report: Report) -> Table | None:
    if len(report.runs) < 2 or not report.disagreements:
        return None
    names = [r.name for r in report.runs]
    headers = ["id", "reference", *[f"{n} text" for n in names], *[f"{n} WER %" for n in names]]
    rows = []
    for d in report.disagreements:
        texts = [_text(r["text"]) if r["status"] == "ok" else f"[failed] {_text(r['text'])}" for r in d["runs"]]
        rows.append([d["id"], _text(d["reference"]), *texts, *[pct(r["wer"]) for r in d["runs"]]])
    return Table("Where the runs disagree most", headers, rows,
                 f"the {len(rows)} common utterances with the largest WER spread between runs", "disagreements")


def worst_table(report: Report) -> Table | None:
    if not report.worst:
        return None
    rows = [
        [w["id"], num(w["duration_s"]), _text(w["reference"]),
         _text(w["text"]) if w["status"] == "ok" else f"[failed] {_text(w['text'])}", str(w["word_edits"]),
         pct(w["wer"])]
        for w in report.worst
    ]
    return Table("Utterances with the most word errors", ["id", "duration s", "reference", "prediction", "edits",
                                                          "WER %"], rows, "", "worst")


def all_tables(report: Report) -> list[Table]:
    tables: list[Table | None] = [runs_table(report), accuracy_table(report), duration_table(report),
                                  speed_table(report)]
    for run in report.runs:
        if run.speed.per_device:
            tables.append(device_table(run))
        tables.append(failures_table(run))
    tables += [comparison_table(report), worst_table(report)]
    tables += calibration_tables(report)
    return [t for t in tables if t is not None]


def statements(report: Report) -> list[str]:
    """Everything the reader should be told: what was compared, what was left out and why."""
    out = list(report.notes)
    for run in report.runs:
        out += [f"{run.name}: {n}" for n in run.run.notes]
    return out + calibration_notes(report)
