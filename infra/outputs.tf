output "corpora_bucket" {
  description = "Upload corpora here; input_pattern is relative to it."
  value       = google_storage_bucket.corpora.name
}

output "outputs_bucket" {
  description = "Privatized documents, dead letters and privacy reports; output_prefix is relative to it."
  value       = google_storage_bucket.outputs.name
}

output "staging_bucket" {
  description = "Template specs: templates/build.sh BUCKET."
  value       = google_storage_bucket.staging.name
}

output "temp_bucket" {
  description = "Dataflow temp and staging locations: templates/launch.sh TEMP_BUCKET."
  value       = google_storage_bucket.temp.name
}

output "index_bucket" {
  description = "Upload index directories here; index is relative to it."
  value       = google_storage_bucket.index.name
}

output "ledger_bucket" {
  description = "The budget ledger (with unit_budget set): `dptext ledger --ledger gs://BUCKET/LEDGER_PREFIX` summarises it."
  value       = google_storage_bucket.ledger.name
}

output "worker_service_account" {
  description = "Runs the launcher and the workers: templates/launch.sh WORKER_SA."
  value       = google_service_account.worker.email
}

output "scheduler_service_account" {
  description = "Launches the template on the schedule."
  value       = google_service_account.scheduler.email
}

output "repository_url" {
  description = "Artifact Registry repository of the launcher and worker images."
  value       = local.registry
}

output "launcher_image" {
  description = "Launcher image the template spec must name."
  value       = local.launcher_image
}

output "worker_image" {
  description = "Worker image (sdk_container_image) every launch uses."
  value       = local.worker_image
}

output "template_spec_path" {
  description = "Template spec every launch reads; templates/build.sh must have written it."
  value       = local.template_spec_path
}

output "scheduler_job_name" {
  description = "Cloud Scheduler job that launches the template."
  value       = google_cloud_scheduler_job.dptext.name
}

output "terraform_job_id" {
  description = "Dataflow job id of the run launched by apply (null unless launch_on_apply)."
  value       = one(google_dataflow_flex_template_job.dptext[*].job_id)
}

output "build_command" {
  description = "Builds the images and the template spec this configuration launches (run it from the repository root)."
  value       = "PROJECT=${var.project} REGION=${var.region} BUCKET=${google_storage_bucket.staging.name} REPOSITORY=${google_artifact_registry_repository.dptext.repository_id} VERSION=${var.dptext_version} templates/build.sh"
}

output "run_now_command" {
  description = "Starts a scheduled run now, outside the schedule."
  value       = "gcloud scheduler jobs run ${google_cloud_scheduler_job.dptext.name} --location ${var.region} --project ${var.project}"
}
