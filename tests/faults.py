"""A fault injector for the fault tests: a JobConfig whose mechanism fails once, on the first
attempt of the batch that holds a chosen word. Importable by every worker process (the portable
worker pool and the multi-process DirectRunner import it by name when they unpickle the DoFn)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from dptext.transforms.config import JobConfig, LoadedMechanism


@dataclass(frozen=True)
class FlakyConfig(JobConfig):
    flag_file: str = ""  # created at the first failure: later attempts and workers see it
    trigger_id: int = 0  # the vocabulary id whose batch fails
    error: str = "OSError"  # OSError: transient (the DoFn retries); RuntimeError: not

    def load(self) -> LoadedMechanism:
        loaded = super().load()
        return LoadedMechanism(loaded.index, _FailOnce(loaded.mechanism, self))


class _FailOnce:
    def __init__(self, mechanism, config: FlakyConfig):
        self.mechanism, self.config = mechanism, config
        self.name, self.epsilon = mechanism.name, mechanism.epsilon

    def perturb(self, ids, rng):
        if (ids == self.config.trigger_id).any():
            try:
                os.close(os.open(self.config.flag_file, os.O_CREAT | os.O_EXCL))  # atomic: once only
            except FileExistsError:
                pass
            else:
                raise {"OSError": OSError, "RuntimeError": RuntimeError}[self.config.error]("injected fault")
        return self.mechanism.perturb(ids, rng)
