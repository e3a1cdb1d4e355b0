"""dptext: word-level differential privacy for text corpora, as Apache Beam transforms.

This folder is installed as the top-level package `dptext` (setup.py's package_dir), so that the
repository keeps `pipeline/` and `transforms/` at its top level while users and Beam workers see
one namespace: `dptext`, `dptext.pipeline`, `dptext.transforms`.
"""
from dptext.pipeline import __version__

__all__ = ["__version__"]
