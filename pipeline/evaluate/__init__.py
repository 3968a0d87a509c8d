"""Evaluation of run folders: load results, normalize text, score WER/CER, speed, compare runs, render reports.

Modules, in data-flow order: `runs` (load a run folder) → `normalize` → `metrics` (accuracy) and `speed` (timings)
→ `compare` (several runs on their common utterances) → `report` (one object with everything) → `render_text`
(rich / markdown / json) and `render_html` + `plots` (self-contained HTML).
"""
