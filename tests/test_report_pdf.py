"""report.pdf: printed from the HTML report by WeasyPrint (the 'pdf' extra) or a Chromium binary."""

from __future__ import annotations

import re
import subprocess
import sys
import zlib

import pytest

from leakaudit.errors import LeakauditError
from leakaudit.io import write_json
from leakaudit.report import pdf
from leakaudit.report.render import write_reports
from tests.test_report import make_results

PRINTERS = ["weasyprint"] * (pdf._weasyprint() is not None) + ["browser"] * (pdf.find_browser() is not None)


def _pages(data: bytes) -> int:
    """Page objects in a PDF, looking inside compressed object streams too."""
    chunks = [data]
    for m in re.finditer(rb"stream\r?\n(.*?)endstream", data, re.S):
        try:
            chunks.append(zlib.decompress(m.group(1)))
        except zlib.error:
            pass
    return sum(len(re.findall(rb"/Type\s*/Page[^s]", c)) for c in chunks)


@pytest.mark.skipif(not PRINTERS, reason="neither WeasyPrint nor Chromium/Chrome is available")
@pytest.mark.parametrize("printer", PRINTERS)
def test_report_prints_to_a_multi_page_pdf(printer, tmp_path, monkeypatch):
    if printer == "browser":
        monkeypatch.setattr(pdf, "_weasyprint", lambda: None)
    paths = write_reports(make_results(), tmp_path)
    out = pdf.write_pdf(paths["html"])
    data = out.read_bytes()
    assert out == tmp_path / "report.pdf" and data.startswith(b"%PDF-")
    assert _pages(data) >= 2  # the report's sections do not fit one page
    assert len(data) > 20_000  # the plots came along
    assert not list(tmp_path.glob(".report-*"))  # no temporary file left behind
    assert out.stat().st_mode & 0o044 == paths["html"].stat().st_mode & 0o044  # readable like the HTML


def test_no_printer_is_a_clear_error_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(pdf, "_weasyprint", lambda: None)
    monkeypatch.setattr(pdf, "find_browser", lambda: None)
    paths = write_reports(make_results(), tmp_path)
    with pytest.raises(LeakauditError, match=r"needs the 'pdf' extra .*Chromium"):
        pdf.write_pdf(paths["html"])
    assert not (tmp_path / "report.pdf").exists() and not list(tmp_path.glob(".report-*"))


@pytest.mark.skipif(not PRINTERS, reason="neither WeasyPrint nor Chromium/Chrome is available")
def test_cli_report_pdf(tmp_path):
    write_json(tmp_path / "results.json", make_results().model_dump(mode="json"))
    done = subprocess.run([sys.executable, "-m", "leakaudit", "report", str(tmp_path), "--pdf"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "report.pdf").read_bytes().startswith(b"%PDF-")
    assert "pdf: " in done.stdout


def test_a_hung_browser_is_a_clear_error_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(pdf, "pdf_printer", lambda: "/usr/bin/chromium")

    def hang(cmd, **kw):
        raise subprocess.TimeoutExpired(cmd, kw.get("timeout"))

    monkeypatch.setattr(pdf.subprocess, "run", hang)
    paths = write_reports(make_results(), tmp_path)
    with pytest.raises(LeakauditError, match=r"did not finish in .* s \(the browser hung\)"):
        pdf.write_pdf(paths["html"])
    assert not (tmp_path / "report.pdf").exists() and not list(tmp_path.glob(".report-*"))
