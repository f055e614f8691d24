"""The CLI's results table shows memory and latency columns only where records contain them."""

from __future__ import annotations

from bench.console import results_table
from tests.report_records import report_records


def headers(table) -> list[str]:
    return [str(column.header) for column in table.columns]


def column_cells(table, header: str) -> list[str]:
    (column,) = [column for column in table.columns if column.header == header]
    return list(column.cells)


def test_latency_and_memory_columns_when_recorded():
    table = results_table(report_records())
    assert headers(table)[-3:] == ["Peak mem (MB)", "Prefill (ms)", "Decode (ms/token)"]
    decode = column_cells(table, "Decode (ms/token)")
    assert "15.50" in decode
    assert "" in decode


def test_no_measured_columns_without_records():
    records = [record for record in report_records() if record["metric"]["name"].startswith(("ppl/", "zeroshot/"))]
    table = results_table(records)
    assert headers(table)[-1] == "Bits/w (linears)"
    assert "Decode (ms/token)" not in headers(table)
