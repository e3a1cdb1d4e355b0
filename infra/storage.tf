# Five buckets, one per kind of data, so that each grant in iam.tf covers exactly one kind and
# each lifecycle rule can act on a whole bucket. All are in var.region (where Dataflow runs),
# readable only through IAM (uniform bucket-level access) and never public.

# Raw corpora: the only place the unprotected text lives. No lifecycle rule: the schedule reads
# them, so deleting them is the owner's decision (and the best privacy practice once processed).
resource "google_storage_bucket" "corpora" {
  name                        = "${var.bucket_prefix}-corpora"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = var.force_destroy
  labels                      = local.labels
  depends_on                  = [google_project_service.apis]
}

# Privatized documents, dead letters and privacy reports.
resource "google_storage_bucket" "outputs" {
  name                        = "${var.bucket_prefix}-outputs"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = var.force_destroy
  labels                      = local.labels
  depends_on                  = [google_project_service.apis]

  # Every scheduled run writes the same output prefix: versioning keeps the previous run's
  # files (and its privacy report) for a while instead of losing them to the overwrite.
  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = var.output_noncurrent_days
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  # Outputs are read soon after a run and rarely later: Nearline halves the cost of keeping them.
  lifecycle_rule {
    condition {
      age                   = var.output_nearline_days
      matches_storage_class = ["STANDARD"]
    }
    action {
      type          = "SetStorageClass"
      storage_class = "NEARLINE"
    }
  }
}

# Template specs (templates/build.sh writes templates/dptext-VERSION.json here). Separate from the
# temp bucket and without a lifecycle rule: every scheduled run reads the spec, so it must never
# age out, and the workers, which may write the temp bucket, cannot overwrite it.
resource "google_storage_bucket" "staging" {
  name                        = "${var.bucket_prefix}-staging"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = var.force_destroy
  labels                      = local.labels
  depends_on                  = [google_project_service.apis]
}

# Dataflow temp and staging locations: scratch space, needed only while a job runs.
resource "google_storage_bucket" "temp" {
  name                        = "${var.bucket_prefix}-temp"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = var.force_destroy
  labels                      = local.labels
  depends_on                  = [google_project_service.apis]

  # Deleted scratch files would otherwise be billed for the default 7 days of soft delete
  # (Beam warns about it for temp and staging locations).
  soft_delete_policy {
    retention_duration_seconds = 0
  }

  lifecycle_rule {
    condition {
      age = var.temp_retention_days
    }
    action {
      type = "Delete"
    }
  }
}

# The budget ledger (dptext --budget-ledger): each privacy unit's spend across runs, as keyed
# hashes. Its own bucket, so only the ledger grant covers it, and no lifecycle rule: a version that
# aged out would hand every unit its budget back.
resource "google_storage_bucket" "ledger" {
  name                        = "${var.bucket_prefix}-ledger"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = var.force_destroy
  labels                      = local.labels
  depends_on                  = [google_project_service.apis]
}

# The ledger's HMAC key. Terraform creates the secret but never its value, so the key stays out of
# the Terraform state: add it once with
#   openssl rand -base64 32 | gcloud secrets versions add dptext-ledger-key --data-file=-
resource "google_secret_manager_secret" "ledger_key" {
  project   = var.project
  secret_id = var.ledger_key_secret
  labels    = local.labels

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}

# Index directories (`dptext build-index`). Each launcher and worker machine copies the one a run
# names to local disk once, keyed by its manifest: upload a rebuilt index under a new path rather
# than over the one a schedule is reading.
resource "google_storage_bucket" "index" {
  name                        = "${var.bucket_prefix}-index"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = var.force_destroy
  labels                      = local.labels
  depends_on                  = [google_project_service.apis]
}
