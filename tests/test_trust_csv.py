"""CSV cells from untrusted strings cannot start a spreadsheet formula, and read back as the
names they were."""

from __future__ import annotations

import csv
import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infoprobe import report
from infoprobe.report.text import from_spreadsheet_cell, spreadsheet_cell
from infoprobe.schema import COLUMNS, PER_CLASS_COLUMNS

HOSTILE = [
    '=HYPERLINK("http://evil.example","x")',
    "+1+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(A1:A2)",
    "\t=1+1",
    "\r=1+1",
    "'=1+1",
]


def _row(columns, **text):
    row = {c: 1 for c in columns}
    row.update(n_samples=3, n_classes=2, classes_present=2, estimate="exact", **text)
    return row


def _cells(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.mark.parametrize("name", HOSTILE)
def test_names_that_start_a_formula_are_written_as_text(name):
    row = _row(COLUMNS, checkpoint=name, model=name, note=name)
    cell = _cells(report.csv_text([row], COLUMNS))[0]
    for column in ("checkpoint", "model", "note"):
        assert cell[column] == "'" + name  # a spreadsheet shows it, never evaluates it
    per_class = _cells(
        report.csv_text([{"checkpoint": "a", "class": 0, "name": name}], PER_CLASS_COLUMNS)
    )
    assert per_class[0]["name"] == "'" + name


def test_ordinary_names_and_numbers_are_unchanged():
    row = _row(COLUMNS, checkpoint="runs/a-b.pt", model="resnet18", note="", mir=-0.5)
    cell = _cells(report.csv_text([row], COLUMNS))[0]
    assert cell["checkpoint"] == "runs/a-b.pt" and cell["model"] == "resnet18"
    assert cell["mir"] == "-0.5"  # numbers are no formulas: written as they are


@pytest.mark.parametrize("name", [*HOSTILE, "plain", "''x", "'", ""])
def test_a_csv_infoprobe_wrote_reads_back_the_same_names(tmp_path, name):
    p = tmp_path / "rows.csv"
    row = _row(COLUMNS, checkpoint=name or "c", model=name, note=name)
    report.write_csv(p, [row], COLUMNS)
    back = report.read_csv_rows(p, COLUMNS)[0]
    assert (back["checkpoint"], back["model"], back["note"]) == (name or "c", name, name)


@given(st.text(max_size=20))
def test_the_cell_escape_is_inverted_exactly(text):
    cell = spreadsheet_cell(text)
    assert from_spreadsheet_cell(cell) == text
    assert not cell.startswith(("=", "+", "-", "@", "\t", "\r"))


@pytest.mark.parametrize("name", ["a\r=1+1", "a\n=1+1", "a\r\n@x"])
def test_a_line_break_in_a_name_never_starts_a_row(tmp_path, name):
    row = _row(COLUMNS, checkpoint=name, note="ok")
    rows = _cells(report.csv_text([row], COLUMNS))
    assert len(rows) == 1 and rows[0]["checkpoint"] == name and rows[0]["note"] == "ok"
    p = tmp_path / "rows.csv"
    report.write_csv(p, [row], COLUMNS)
    assert report.read_csv_rows(p, COLUMNS)[0]["checkpoint"] == name
