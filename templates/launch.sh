#!/usr/bin/env bash
# Launch the Flex Template once.
#   PROJECT=my-project REGION=europe-west1 BUCKET=my-staging-bucket TEMP_BUCKET=my-temp-bucket \
#   WORKER_SA=dptext-worker@my-project.iam.gserviceaccount.com \
#   INPUT='gs://corpora/x/*.jsonl' OUTPUT=gs://outputs/x/run1 INDEX=/opt/dptext/index EPSILON=52 \
#   templates/launch.sh [extra gcloud flags]
# Optional: REPOSITORY (dptext), VERSION (dptext's version), MECHANISM (truncated_gumbel),
#           PARAMETERS (extra template parameters, comma-separated name=value pairs).
set -euo pipefail
cd "$(dirname "$0")/.."
for v in PROJECT REGION BUCKET TEMP_BUCKET WORKER_SA INPUT OUTPUT INDEX EPSILON; do
  [ -n "${!v:-}" ] || { echo "set ${v}" >&2; exit 2; }
done
REPOSITORY=${REPOSITORY:-dptext}
VERSION=${VERSION:-$(sed -n 's/^__version__ = "\(.*\)"/\1/p' pipeline/__init__.py)}
WORKER_IMAGE="${REGION}-docker.pkg.dev/${PROJECT}/${REPOSITORY}/dptext-worker:${VERSION}"
PARAMS="input=${INPUT},output=${OUTPUT},index=${INDEX},epsilon=${EPSILON},mechanism=${MECHANISM:-truncated_gumbel}"
PARAMS="${PARAMS},sdk_container_image=${WORKER_IMAGE}${PARAMETERS:+,${PARAMETERS}}"
gcloud dataflow flex-template run "dptext-$(date -u +%Y%m%d-%H%M%S)" --project "${PROJECT}" --region "${REGION}" \
  --template-file-gcs-location "gs://${BUCKET}/templates/dptext-${VERSION}.json" \
  --service-account-email "${WORKER_SA}" \
  --temp-location "gs://${TEMP_BUCKET}/temp" --staging-location "gs://${TEMP_BUCKET}/staging" \
  --parameters "${PARAMS}" "$@"
