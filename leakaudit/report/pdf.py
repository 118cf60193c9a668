"""The report as a PDF, printed from the self-contained HTML report.

Two printers, tried in this order: WeasyPrint (the optional ``pdf`` extra:
``pip install 'leakaudit[pdf]'``; it needs the Pango library, present on most Linux systems) and
a Chromium or Chrome binary on PATH (``--headless --print-to-pdf``).  Both print with the report's
own print styles.  The PDF is written to a temporary file and renamed into place, so an
interrupted print leaves no half-written ``report.pdf``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from leakaudit.errors import LeakauditError

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
REPORT_PDF = "report.pdf"


def _weasyprint():
    try:
        import weasyprint
    except (ImportError, OSError):  # not installed, or its Pango library is missing
        return None
    return weasyprint


def find_browser() -> str | None:
    """The first Chromium or Chrome binary on PATH, or None."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def pdf_printer() -> str | None:
    """Which printer :func:`write_pdf` would use ("weasyprint", a browser path), or None."""
    if _weasyprint() is not None:
        return "weasyprint"
    return find_browser()


def write_pdf(html_path: Path, pdf_path: Path | None = None, *, timeout_s: float = 180) -> Path:
    """Print ``html_path`` (a report written by :func:`leakaudit.report.render.write_reports`) to PDF."""
    html_path = Path(html_path)
    pdf_path = Path(pdf_path) if pdf_path is not None else html_path.with_name(REPORT_PDF)
    printer = pdf_printer()
    if printer is None:
        raise LeakauditError(
            "PDF output needs the 'pdf' extra (pip install 'leakaudit[pdf]') or Chromium/Chrome on PATH"
        )
    fd, tmp_name = tempfile.mkstemp(prefix=".report-", suffix=".pdf", dir=pdf_path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if printer == "weasyprint":
            _weasyprint().HTML(filename=str(html_path)).write_pdf(str(tmp))
        else:
            with tempfile.TemporaryDirectory() as profile:  # a throwaway browser profile
                try:
                    done = subprocess.run(
                        # (--no-sandbox lets it print as root; the report holds no script, and turning scripts
                        # off, --blink-settings=scriptEnabled=false, makes headless Chromium print no PDF at all)
                        [printer, "--headless", "--no-sandbox", "--disable-gpu", "--no-pdf-header-footer",
                         f"--user-data-dir={profile}", f"--print-to-pdf={tmp}", html_path.resolve().as_uri()],
                        capture_output=True, text=True, timeout=timeout_s,
                    )
                except subprocess.TimeoutExpired:
                    raise LeakauditError(f"{printer}: printing {html_path} to PDF did not finish in {timeout_s:g} s "
                                         "(the browser hung); the HTML report is complete") from None
            if done.returncode != 0 or not tmp.is_file() or tmp.stat().st_size == 0:
                raise LeakauditError(f"{printer}: printing {html_path} to PDF failed "
                                     f"({(done.stderr.strip().splitlines() or ['no output'])[-1]})")
        if tmp.read_bytes()[:5] != b"%PDF-":
            raise LeakauditError(f"{printer}: printing {html_path} did not produce a PDF")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide a report meant to be shared
        os.replace(tmp, pdf_path)
    finally:
        tmp.unlink(missing_ok=True)
    return pdf_path
