# The scheduled templated job: on var.schedule, Cloud Scheduler calls the Dataflow
# flexTemplates:launch API as the scheduler account, with the same launch as dataflow.tf.
resource "google_cloud_scheduler_job" "dptext" {
  project     = var.project
  region      = var.region
  name        = var.job_name
  description = "Launch the dptext Flex Template ${var.dptext_version} (mechanism ${var.mechanism}, epsilon ${var.epsilon})"
  schedule    = var.schedule
  time_zone   = var.time_zone

  # No retries: retrying a launch that did start (its response lost) would privatize the same
  # documents twice and spend their privacy budget twice; a missed run shows in the job's log
  # and is cheap to redo by hand.
  retry_config {
    retry_count = 0
  }

  http_target {
    http_method = "POST"
    uri         = "https://dataflow.googleapis.com/v1b3/projects/${var.project}/locations/${var.region}/flexTemplates:launch"
    headers     = { "Content-Type" = "application/json" }
    body = base64encode(jsonencode({
      launchParameter = {
        jobName              = var.job_name
        containerSpecGcsPath = local.template_spec_path
        parameters           = local.template_parameters
        environment = {
          serviceAccountEmail = google_service_account.worker.email
          tempLocation        = local.temp_location
          stagingLocation     = local.staging_location
          sdkContainerImage   = local.worker_image
          maxWorkers          = var.max_workers
        }
      }
    }))

    oauth_token {
      service_account_email = google_service_account.scheduler.email
      scope                 = "https://www.googleapis.com/auth/cloud-platform"
    }
  }

  lifecycle {
    # dptext refuses a cap or a budget without the field naming the person: fail at plan, not at 03:00.
    precondition {
      condition     = (var.unit_budget == null && var.max_tokens_per_unit == null) || var.privacy_unit != ""
      error_message = "unit_budget and max_tokens_per_unit need privacy_unit (the field or column naming the person)."
    }
  }

  depends_on = [google_project_service.apis]
}
