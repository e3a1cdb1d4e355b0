"""dptext: word-level differential privacy for text corpora, as Apache Beam transforms.

    import dptext

    result = texts | dptext.Privatize(index="index/", mechanism="tem", epsilon=3.0)
    result.documents, result.dead_letter, result.report

This folder is installed as the top-level package `dptext` (setup.py's package_dir), so that the
repository keeps `pipeline/` and `transforms/` at its top level while users and Beam workers see
one namespace: `dptext`, `dptext.pipeline`, `dptext.transforms`.

The public names load on first use (PEP 562): `dptext run` starts its supervisor, which must
catch Ctrl-C at once, through `dptext.pipeline.cli` without importing Beam.
"""

from __future__ import annotations

import importlib

from dptext.pipeline import __version__

_PUBLIC = {
    "Privatize": "dptext.pipeline.privatize",
    "PrivatizeResult": "dptext.pipeline.privatize",
    "Document": "dptext.transforms.beam",
    "JobConfig": "dptext.transforms.config",
    "EmbeddingIndex": "dptext.transforms.index",
    "read_embedding": "dptext.transforms.embedding_io",
    "DptextError": "dptext.transforms.errors",
    "ParameterError": "dptext.transforms.errors",
    "mechanisms": None,
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'dptext' has no attribute {name!r}")
    module = _PUBLIC[name]
    value = (
        importlib.import_module(f"dptext.transforms.{name}")
        if module is None
        else getattr(importlib.import_module(module), name)
    )
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
