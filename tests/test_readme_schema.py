"""README's results-schema tables are printed from workers/record.py FIELDS (issue 17 item 6): the README says what
the part files and results.parquet hold, and fails here when a column is added, removed, retyped or redescribed
without the README following."""

import subprocess
import sys
from pathlib import Path

import pyarrow as pa

from transcribe_batch.workers import record

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- results-schema:start", "<!-- results-schema:end -->"
FIX = ("README.md's results-schema tables differ from workers/record.py FIELDS: replace what lies between its "
       "results-schema markers with the output of `python -m transcribe_batch.workers.record --markdown`")


def readme_tables() -> str:
    text = README.read_text(encoding="utf-8")
    assert text.count(START) == 1 and text.count(END) == 1, f"README.md needs one {START} … {END} block"
    block = text[text.index(START):text.index(END)]
    return block[block.index("-->") + 3:].lstrip("\n")  # after the start marker's comment


def test_readme_schema_tables_are_the_ones_fields_generates():
    assert readme_tables() == record.markdown_tables(), FIX


def test_every_part_column_has_one_row_with_its_type():
    rows = [line for line in record.markdown_tables().split("\n\n")[0].splitlines()[2:]]
    assert [r.split(" | ")[0].strip("| `") for r in rows] == record.COLUMNS
    by_name = {r.split(" | ")[0].strip("| `"): r.split(" | ")[1].strip("`") for r in rows}
    assert by_name["line"] == "int64" and by_name["confidence"] == "double"
    assert by_name["started_at"] == "timestamp[us, UTC]" and by_name["segments"] == "list<segment>"


def test_the_tables_follow_fields_and_escape_table_pipes(monkeypatch):
    extra = ("spoken_rate", pa.float64(), "words | second")
    monkeypatch.setattr(record, "FIELDS", [*record.FIELDS, extra])
    tables = record.markdown_tables()
    assert "| `spoken_rate` | `double` | words \\| second |" in tables
    assert tables != readme_tables()


def test_the_command_prints_the_tables():
    out = subprocess.run([sys.executable, "-m", "transcribe_batch.workers.record", "--markdown"], capture_output=True,
                         text=True, check=True).stdout
    assert out == record.markdown_tables()
    bad = subprocess.run([sys.executable, "-m", "transcribe_batch.workers.record"], capture_output=True, text=True)
    assert bad.returncode != 0 and "--markdown" in bad.stderr
