#!/usr/bin/env bash
# Build and push the launcher and worker images, then write the Flex Template spec.
#   PROJECT=my-project REGION=europe-west1 BUCKET=my-staging-bucket templates/build.sh
# Optional: REPOSITORY (default dptext), VERSION (default: dptext's version),
#           INDEX_DIR (an index directory to bake into both images at /opt/dptext/index).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${PROJECT:?set PROJECT}" "${REGION:?set REGION}" "${BUCKET:?set BUCKET (the staging bucket)}"
REPOSITORY=${REPOSITORY:-dptext}
VERSION=${VERSION:-$(sed -n 's/^__version__ = "\(.*\)"/\1/p' pipeline/__init__.py)}
REGISTRY="${REGION}-docker.pkg.dev/${PROJECT}/${REPOSITORY}"
LAUNCHER_IMAGE="${REGISTRY}/dptext-launcher:${VERSION}"
WORKER_IMAGE="${REGISTRY}/dptext-worker:${VERSION}"
TEMPLATE="gs://${BUCKET}/templates/dptext-${VERSION}.json"

if [ -n "${INDEX_DIR:-}" ]; then
  cp "${INDEX_DIR}"/* templates/index/
fi
gcloud builds submit --project "${PROJECT}" --region "${REGION}" --config templates/cloudbuild.yaml \
  --substitutions "_LAUNCHER_IMAGE=${LAUNCHER_IMAGE},_WORKER_IMAGE=${WORKER_IMAGE}" .
gcloud dataflow flex-template build "${TEMPLATE}" --project "${PROJECT}" \
  --image "${LAUNCHER_IMAGE}" --sdk-language PYTHON --metadata-file templates/metadata.json \
  --additional-user-labels "app=dptext,version=${VERSION//./-}"
echo "template: ${TEMPLATE}"
echo "worker image (pass as sdk_container_image): ${WORKER_IMAGE}"
