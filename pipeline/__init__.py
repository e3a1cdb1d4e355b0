"""dptext: the pipeline (CLI, options, graph, IO, report)."""

__version__ = "0.1.0"
