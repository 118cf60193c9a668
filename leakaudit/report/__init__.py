"""Results schema and the Markdown / HTML reports rendered from it (no torch here)."""

from leakaudit.report.schema import SCHEMA_VERSION, Results

__all__ = ["SCHEMA_VERSION", "Results"]
