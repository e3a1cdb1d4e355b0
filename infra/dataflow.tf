# One run launched by `terraform apply`, with exactly the launch the schedule makes (main.tf's
# locals), for a first run or a check after an upgrade. Off unless launch_on_apply: Terraform
# treats a finished batch job as gone and would launch it again on every later apply.
resource "google_dataflow_flex_template_job" "dptext" {
  provider = google-beta
  count    = var.launch_on_apply ? 1 : 0

  project                 = var.project
  region                  = var.region
  name                    = "${var.job_name}-terraform"
  container_spec_gcs_path = local.template_spec_path
  parameters              = local.template_parameters
  service_account_email   = google_service_account.worker.email
  temp_location           = local.temp_location
  staging_location        = local.staging_location
  sdk_container_image     = local.worker_image
  max_workers             = var.max_workers
  labels                  = local.labels

  # A batch job has nothing to drain; destroy stops it at once.
  on_delete = "cancel"

  # The job runs as the worker account: it needs its grants before it starts.
  depends_on = [
    google_project_iam_member.worker_dataflow,
    google_storage_bucket_iam_member.worker_reads_corpora,
    google_storage_bucket_iam_member.worker_reads_index,
    google_storage_bucket_iam_member.worker_writes_outputs,
    google_storage_bucket_iam_member.worker_writes_temp,
    google_storage_bucket_iam_member.worker_reads_temp_bucket,
    google_artifact_registry_repository_iam_member.worker_pulls_images,
  ]
}
