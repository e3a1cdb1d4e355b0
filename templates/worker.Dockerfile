# Worker image (--sdk_container_image): the Beam SDK with dptext and its compiled dependencies
# preinstalled, so workers never compile annoy at start-up.
ARG BEAM_VERSION=2.62.0
FROM apache/beam_python3.11_sdk:${BEAM_VERSION}

WORKDIR /opt/dptext
COPY setup.py README.md constraints.txt ./
COPY pipeline/ pipeline/
COPY transforms/ transforms/
RUN pip install --no-cache-dir -c constraints.txt . && python -c "import annoy, dptext.transforms.beam"
# Optional: an index baked into the image at /opt/dptext/index (see templates/README.md).
COPY templates/index/ /opt/dptext/index/
