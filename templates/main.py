"""Flex Template entry point (FLEX_TEMPLATE_PYTHON_PY_FILE): submit `dptext run` and return.

The launcher passes every template parameter as --name=value; Dataflow options such as
--runner, --project, --region, --temp_location and --sdk_container_image arrive the same way.
"""

import logging
import sys

from dptext.pipeline.run import run

if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    run(sys.argv[1:], wait=False)
