"""Beam's local job service, but running a job's bundles on N SDK workers at once.

    python -m benchmarks.parallel_job_service --port PORT

Beam's `local_job_service_main` runs every job on ONE SDK worker whatever the job asks for: its
BeamJob calls `FnApiRunner.run_via_runner_api` directly, and the runner's worker count is only
read from `--direct_num_workers` in `FnApiRunner.run_pipeline`, which that path skips. A Flink
or Spark job server runs the same Job API and Fn API with the engine's own parallelism, so the
scale-out benchmark needs a service that does what they do: this one reads
`--sdk_worker_parallelism` (else `--direct_num_workers`) from the submitted job's options, asks
the EXTERNAL worker pool for that many SDK worker processes and deals every stage's input out
among them, exactly as the FnApiRunner's multi-process mode does. Everything else (artifact
staging, job state, metrics, logs) is Beam's own LocalJobServicer.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time

from apache_beam.options.pipeline_options import DirectOptions, PortableOptions
from apache_beam.portability.api import beam_job_api_pb2
from apache_beam.runners.portability import local_job_service
from apache_beam.runners.portability.fn_api_runner import fn_runner


def workers_requested(options) -> int:
    """The job's worker count: --sdk_worker_parallelism, else --direct_num_workers, else 1."""
    parallelism = options.view_as(PortableOptions).sdk_worker_parallelism
    return max(1, int(parallelism or options.view_as(DirectOptions).direct_num_workers or 1))


class ParallelBeamJob(local_job_service.BeamJob):
    def _invoke_runner(self):
        self.set_state(beam_job_api_pb2.JobState.RUNNING)
        options = self.pipeline_options()
        runner = fn_runner.FnApiRunner(provision_info=self._provision_info)
        # The FnApiRunner has no public way to set this outside run_pipeline (see the docstring).
        runner._num_workers = workers_requested(options)
        return runner.run_via_runner_api(self._pipeline_proto, options)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="Job API port (0: any free port, printed)")
    args = parser.parse_args(argv)
    servicer = local_job_service.LocalJobServicer(beam_job_type=ParallelBeamJob)
    port = servicer.start_grpc_server(args.port)
    print(f"parallel job service listening on port {port}", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        servicer.stop()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sys.exit(main())
