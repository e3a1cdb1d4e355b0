# The names shared with templates/build.sh, and everything one launch needs. The Flex Template
# job (dataflow.tf) and the schedule (scheduler.tf) both launch from these locals, so the two
# cannot drift apart.
locals {
  registry       = "${var.region}-docker.pkg.dev/${var.project}/${google_artifact_registry_repository.dptext.repository_id}"
  launcher_image = "${local.registry}/dptext-launcher:${var.dptext_version}"
  worker_image   = "${local.registry}/dptext-worker:${var.dptext_version}"

  # Written by `gcloud dataflow flex-template build` in templates/build.sh (BUCKET = staging).
  template_spec_path = "gs://${google_storage_bucket.staging.name}/templates/dptext-${var.dptext_version}.json"

  temp_location    = "gs://${google_storage_bucket.temp.name}/temp"
  staging_location = "gs://${google_storage_bucket.temp.name}/staging"

  # An absolute path names an index baked into the images; anything else is in the index bucket.
  index = startswith(var.index, "/") ? var.index : "gs://${google_storage_bucket.index.name}/${var.index}"

  # Template parameter names are the `dptext run` options' underscore names (templates/metadata.json).
  # The privacy unit and ledger parameters join only when set (a template parameter cannot be null).
  template_parameters = merge(var.extra_parameters, {
    input     = "gs://${google_storage_bucket.corpora.name}/${var.input_pattern}"
    output    = "gs://${google_storage_bucket.outputs.name}/${var.output_prefix}"
    index     = local.index
    mechanism = var.mechanism
    epsilon   = tostring(var.epsilon)
    }, { for name, value in {
      privacy_unit        = var.privacy_unit == "" ? null : var.privacy_unit
      max_tokens_per_unit = var.max_tokens_per_unit == null ? null : tostring(var.max_tokens_per_unit)
      unit_budget         = var.unit_budget == null ? null : tostring(var.unit_budget)
      budget_ledger       = var.unit_budget == null ? null : "gs://${google_storage_bucket.ledger.name}/${var.ledger_prefix}"
      ledger_key_secret   = var.unit_budget == null ? null : "${google_secret_manager_secret.ledger_key.id}/versions/latest"
  } : name => value if value != null })

  labels = { app = "dptext" }
}

resource "google_project_service" "apis" {
  for_each = toset([
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com", # templates/build.sh builds the images with Cloud Build
    "cloudscheduler.googleapis.com",
    "dataflow.googleapis.com",
    "iam.googleapis.com",
    "secretmanager.googleapis.com", # the budget ledger's key
    "storage.googleapis.com",
  ])
  project = var.project
  service = each.value

  # Other workloads in the project may use these APIs too: destroying this set-up leaves them on.
  disable_on_destroy = false
}
