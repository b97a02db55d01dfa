"""The report tables: what parity_ok means, and the files written."""

from __future__ import annotations

import json

from domaintune.export.table import REPORT_JSON, REPORT_MD, ExportReport, ParityRow, VariantRow, human_bytes


def _report(exact: bool, expect_exact: bool, ids_equal: bool = True) -> ExportReport:
    rows = [ParityRow("What | is\nit?", 9, ids_equal, "ref", "exp" if not exact else "ref", exact, 0.5)]
    variants = [VariantRow("ref", 10, 1.0, None, None, None, 1), VariantRow("exp", 5, None, 0.5, 0.75, 0, 1, 50.0)]
    return ExportReport("gguf", "q8_0", "run", "out", expect_exact, {"model.gguf": 5}, variants, rows,
                        {"llama.cpp": "llama-server -m out/model.gguf"}, ["a note"])


def test_parity_ok_demands_exact_continuations_only_where_expected():
    assert _report(exact=False, expect_exact=False).parity_ok
    assert not _report(exact=False, expect_exact=True).parity_ok
    assert _report(exact=True, expect_exact=True).parity_ok
    assert not _report(exact=True, expect_exact=False, ids_equal=False).parity_ok


def test_markdown_has_both_tables_escaped(tmp_path):
    report = _report(exact=False, expect_exact=False)
    text = report.to_markdown()
    assert "| exp | 5 B | n/a | 50.0% | 75.0% | 0/1 | 50.0 |" in text
    assert "What \\| is\\nit?" in text and "llama-server -m out/model.gguf" in text and "a note" in text
    json_path, md_path = report.write(tmp_path)
    assert (json_path.name, md_path.name) == (REPORT_JSON, REPORT_MD)
    data = json.loads(json_path.read_text())
    assert data["parity_ok"] is True and data["variants"][1]["top1_confident"] == 0.75


def test_human_bytes():
    assert [human_bytes(n) for n in (None, 999, 1536, 220_232_208, 3 * 10**9)] == \
        ["n/a", "999 B", "1.5 KB", "220.2 MB", "3.0 GB"]
