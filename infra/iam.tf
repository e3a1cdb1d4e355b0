# Two service accounts, each with only what its step needs. Grants are on the bucket or the
# repository wherever IAM allows it; only the Dataflow roles are project-wide, because Dataflow
# jobs do not exist yet when the roles are granted.

# Runs the Flex Template launcher VM (builds the graph, stages files, submits the job) and the
# Dataflow workers.
resource "google_service_account" "worker" {
  project      = var.project
  account_id   = "dptext-worker"
  display_name = "dptext Dataflow launcher and workers"
  depends_on   = [google_project_service.apis]
}

# Calls flexTemplates:launch on the schedule.
resource "google_service_account" "scheduler" {
  project      = var.project
  account_id   = "dptext-scheduler"
  display_name = "dptext Cloud Scheduler: launches the Flex Template"
  depends_on   = [google_project_service.apis]
}

# --- worker ---

# Lease and report work items.
resource "google_project_iam_member" "worker_dataflow" {
  project = var.project
  role    = "roles/dataflow.worker"
  member  = google_service_account.worker.member
}

resource "google_storage_bucket_iam_member" "worker_reads_corpora" {
  bucket = google_storage_bucket.corpora.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.worker.member
}

# The launcher (epsilon check, audit) and every worker machine copy the index to local disk once.
resource "google_storage_bucket_iam_member" "worker_reads_index" {
  bucket = google_storage_bucket.index.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.worker.member
}

# Admin, not creator: Beam's file sinks write shards under a temporary name, then copy them into
# place and delete the temporary ones, which needs get, list and delete as well as create.
resource "google_storage_bucket_iam_member" "worker_writes_outputs" {
  bucket = google_storage_bucket.outputs.name
  role   = "roles/storage.objectAdmin"
  member = google_service_account.worker.member
}

resource "google_storage_bucket_iam_member" "worker_writes_temp" {
  bucket = google_storage_bucket.temp.name
  role   = "roles/storage.objectAdmin"
  member = google_service_account.worker.member
}

# Beam's stager reads the staging bucket's metadata (storage.buckets.get) before it uploads, and
# objectAdmin has no bucket permissions; this is the smallest predefined role that does.
resource "google_storage_bucket_iam_member" "worker_reads_temp_bucket" {
  bucket = google_storage_bucket.temp.name
  role   = "roles/storage.legacyBucketReader"
  member = google_service_account.worker.member
}

# Pull the launcher image (launcher VM) and the worker image (workers).
resource "google_artifact_registry_repository_iam_member" "worker_pulls_images" {
  project    = var.project
  location   = google_artifact_registry_repository.dptext.location
  repository = google_artifact_registry_repository.dptext.name
  role       = "roles/artifactregistry.reader"
  member     = google_service_account.worker.member
}

# --- scheduler ---

# The ledger: read the version in force, write the next one (Beam writes through temporary files it
# then deletes, so objectAdmin), and the launcher reads the ledger's key.
resource "google_storage_bucket_iam_member" "worker_writes_ledger" {
  bucket = google_storage_bucket.ledger.name
  role   = "roles/storage.objectAdmin"
  member = google_service_account.worker.member
}

resource "google_secret_manager_secret_iam_member" "worker_reads_ledger_key" {
  project   = var.project
  secret_id = google_secret_manager_secret.ledger_key.secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.worker.member
}

# Create Dataflow jobs: the smallest predefined role with dataflow.jobs.create.
resource "google_project_iam_member" "scheduler_launches_jobs" {
  project = var.project
  role    = "roles/dataflow.developer"
  member  = google_service_account.scheduler.member
}

# Start jobs that run as the worker account, and as no other account: granted on the worker
# account itself, never project-wide.
resource "google_service_account_iam_member" "scheduler_acts_as_worker" {
  service_account_id = google_service_account.worker.name
  role               = "roles/iam.serviceAccountUser"
  member             = google_service_account.scheduler.member
}

# Read the template spec that each launch names.
resource "google_storage_bucket_iam_member" "scheduler_reads_template" {
  bucket = google_storage_bucket.staging.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.scheduler.member
}
