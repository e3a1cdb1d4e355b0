# The launcher image (dptext-launcher) and the worker image (dptext-worker), pushed by
# templates/build.sh and tagged with the dptext version.
resource "google_artifact_registry_repository" "dptext" {
  project       = var.project
  location      = var.region
  repository_id = var.repository
  format        = "DOCKER"
  description   = "dptext Flex Template launcher and worker images"
  labels        = local.labels
  depends_on    = [google_project_service.apis]
}
