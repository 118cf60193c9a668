"""Markdown and HTML reports rendered from :class:`~leakaudit.report.schema.Results` alone.

The numbers are formatted into a plain "view" dict (:mod:`leakaudit.report.sections`, from the
findings of :mod:`leakaudit.report.findings`) that both Jinja templates lay out, so the two
reports always agree.  Output depends only on the results (the date shown is
``results.run.created``), so rendering the same results twice gives identical files.
:func:`write_reports` also writes a model card per model (:mod:`leakaudit.report.modelcard`).
``python -m leakaudit.report.render --write-schema`` regenerates ``docs/results.schema.json``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import jinja2

from leakaudit.io import write_text_atomic
from leakaudit.report.findings import (
    FINDINGS,
    Finding,
    canary_extraction_counts,
    empirical_best,
    headline,
    max_exposure,
    memorization_p_values,
    model_findings,
)
from leakaudit.report.formatting import _md_code, _md_escape
from leakaudit.report.mia import best_attack
from leakaudit.report.modelcard import model_card
from leakaudit.report.schema import Results
from leakaudit.report.sections import _view
from leakaudit.report.stats import binomial_greater, fisher_greater, wilson

__all__ = [
    "FINDINGS",
    "REPORT_HTML",
    "REPORT_MD",
    "SCHEMA_PATH",
    "Finding",
    "best_attack",
    "binomial_greater",
    "canary_extraction_counts",
    "empirical_best",
    "fisher_greater",
    "headline",
    "main",
    "max_exposure",
    "memorization_p_values",
    "model_card_path",
    "model_findings",
    "render_html",
    "render_markdown",
    "results_schema_text",
    "wilson",
    "write_reports",
    "write_schema",
]

REPORT_MD = "report.md"
REPORT_HTML = "report.html"


def _env(html: bool) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("leakaudit.report", "templates"),
        autoescape=html,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["md"] = _md_escape
    env.filters["mdcode"] = _md_code
    return env


def render_markdown(results: Results) -> str:
    """The report as Markdown (no images: the plots are in the HTML report)."""
    text = _env(html=False).get_template("report.md.j2").render(v=_view(results, plots=False))
    return re.sub(r"\n{3,}", "\n\n", text)


def render_html(results: Results) -> str:
    """The report as one self-contained HTML file (inline CSS, plots as inline PNG data URIs)."""
    return _env(html=True).get_template("report.html.j2").render(v=_view(results, plots=True))


def model_card_path(run_dir: Path, model_name: str) -> Path:
    """Where :func:`write_reports` puts a model's card: ``model_card-<model>.md`` (odd characters as ``_``)."""
    return Path(run_dir) / f"model_card-{re.sub(r'[^A-Za-z0-9._-]', '_', model_name)}.md"


def write_reports(results: Results, run_dir: Path) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and a ``model_card-<model>.md`` per model atomically into ``run_dir``.

    Returns ``{"markdown": path, "html": path, "model_card:<model>": path, ...}``.
    """
    run_dir = Path(run_dir)
    paths = {"markdown": run_dir / REPORT_MD, "html": run_dir / REPORT_HTML}
    write_text_atomic(paths["markdown"], render_markdown(results))
    write_text_atomic(paths["html"], render_html(results))
    for name in results.models:
        path = model_card_path(run_dir, name)
        write_text_atomic(path, model_card(results, name))
        paths[f"model_card:{name}"] = path
    return paths


SCHEMA_PATH = Path(__file__).resolve().parents[2] / "docs" / "results.schema.json"
"""``docs/results.schema.json`` in a source checkout."""


def results_schema_text() -> str:
    """The JSON Schema of :class:`Results` as written to ``docs/results.schema.json``."""
    return json.dumps(Results.model_json_schema(), indent=2, ensure_ascii=False) + "\n"


def write_schema(path: Path = SCHEMA_PATH) -> Path:
    """Write the JSON Schema of ``results.json`` (regenerate after changing ``schema.py``)."""
    write_text_atomic(Path(path), results_schema_text())
    return Path(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m leakaudit.report.render")
    parser.add_argument(
        "--write-schema",
        nargs="?",
        const=str(SCHEMA_PATH),
        metavar="PATH",
        help=f"write the JSON Schema of results.json (default: {SCHEMA_PATH})",
    )
    args = parser.parse_args(argv)
    if args.write_schema is None:
        parser.print_help()
        return 2
    print(write_schema(Path(args.write_schema)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
