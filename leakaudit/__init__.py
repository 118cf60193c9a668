"""leakaudit: measure how much a language model leaks of its training data.

The pipeline runs one way: data -> canaries -> train -> score -> attacks -> report.
Each stage is a subpackage; :mod:`leakaudit.cli` is a thin command line over them.
"""

__version__ = "0.1.0"

from leakaudit.errors import LeakauditError

__all__ = ["LeakauditError", "__version__"]
