"""The one table writer (facetl/tables.py): the same rows as markdown, CSV and aligned text."""
from facetl.tables import aligned_text, csv_text, markdown_table, plain_cell, table_text

HEADER = ["run", "accuracy", "note"]
ROWS = [["a|b", "0.900", None], ["=SUM(A1)", 0.5, "kept"]]


def test_markdown_table_keeps_a_pipe_inside_its_cell():
    lines = markdown_table(HEADER, ROWS)
    assert lines[:2] == ["| run | accuracy | note |", "|---|---|---|"]
    assert lines[2] == "| a\\|b | 0.900 |  |"     # the cell's | escaped: still three columns; None is empty
    assert lines[3] == "| =SUM(A1) | 0.5 | kept |"


def test_csv_cells_cannot_run_in_a_spreadsheet_and_read_back_plain():
    text = csv_text(HEADER, ROWS)
    lines = text.splitlines()
    assert lines[0] == "run,accuracy,note" and lines[2] == "'=SUM(A1),0.5,kept"
    assert plain_cell(lines[2].split(",")[0]) == "=SUM(A1)"
    assert table_text(".CSV", HEADER, ROWS) == text


def test_table_text_by_suffix_and_aligned_columns():
    assert table_text(".md", HEADER, ROWS) == "\n".join(markdown_table(HEADER, ROWS)) + "\n"
    assert aligned_text(HEADER, ROWS).splitlines() == ["run       accuracy  note", "a|b       0.900",
                                                        "=SUM(A1)  0.5       kept"]
