# Where everything lives.

variable "project" {
  type        = string
  description = "GCP project id that holds every resource here."

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project))
    error_message = "project must be a project id (6-30 characters: lowercase letters, digits, hyphens; starts with a letter), e.g. my-project."
  }
}

variable "region" {
  type        = string
  description = "Region of the buckets, the Artifact Registry repository, the Dataflow jobs and the Cloud Scheduler job; one region keeps the corpora in it and avoids egress."

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]+$", var.region))
    error_message = "region must be a region name such as europe-west1 or us-central1 (not a zone such as europe-west1-b)."
  }
}

variable "bucket_prefix" {
  type        = string
  description = "Prefix of the five bucket names (PREFIX-corpora, -outputs, -staging, -temp, -index); bucket names are global, so include the project id, e.g. my-project-dptext."

  validation {
    # 63 characters at most for a bucket name, minus the longest suffix, "-corpora".
    condition     = can(regex("^[a-z0-9][a-z0-9-]{1,53}[a-z0-9]$", var.bucket_prefix)) && !startswith(var.bucket_prefix, "goog") && !strcontains(var.bucket_prefix, "google")
    error_message = "bucket_prefix must be 3-55 lowercase letters, digits or hyphens, start and end with a letter or digit, and must not start with \"goog\" or contain \"google\"."
  }
}

variable "repository" {
  type        = string
  description = "Artifact Registry docker repository for the launcher and worker images (templates/build.sh REPOSITORY)."
  default     = "dptext"

  validation {
    condition     = can(regex("^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$", var.repository))
    error_message = "repository must be 1-63 lowercase letters, digits or hyphens, starting with a letter and not ending with a hyphen."
  }
}

variable "dptext_version" {
  type        = string
  description = "dptext version to run: the image tag and the template spec name that templates/build.sh wrote (its VERSION, by default the version in pipeline/__init__.py)."
  default     = "0.1.0"

  validation {
    condition     = can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.dptext_version))
    error_message = "dptext_version must be a docker tag: 1-128 letters, digits, '_', '.' or '-', not starting with '.' or '-', e.g. 0.1.0."
  }
}

# What each run does: the `dptext run` options, passed as Flex Template parameters.

variable "input_pattern" {
  type        = string
  description = "Object name or glob inside the corpora bucket (dptext --input), e.g. tweets/*.jsonl."

  validation {
    condition     = can(regex("^[^/]", var.input_pattern)) && !startswith(var.input_pattern, "gs:")
    error_message = "input_pattern is a path inside the corpora bucket such as tweets/*.jsonl: not empty, no leading '/', no gs:// URL (the bucket is added here)."
  }
}

variable "output_prefix" {
  type        = string
  description = "Object prefix inside the outputs bucket (dptext --output); shards, dead letter and privacy report are written beside it, e.g. tweets/daily."

  validation {
    condition     = can(regex("^[^/](.*[^/])?$", var.output_prefix)) && !startswith(var.output_prefix, "gs:")
    error_message = "output_prefix is a prefix inside the outputs bucket such as tweets/daily: not empty, no leading or trailing '/', no gs:// URL (the bucket is added here)."
  }
}

variable "index" {
  type        = string
  description = "Index directory (dptext --index): its path inside the index bucket, e.g. index; or, for an index baked into the images by templates/build.sh INDEX_DIR, the absolute path /opt/dptext/index."
  default     = "index"

  validation {
    condition     = can(regex("^[^/]|^/.", var.index)) && !strcontains(var.index, "://")
    error_message = "index must be a path inside the index bucket such as index or glove-300d (no gs:// URL: the bucket is added here), or an absolute path inside the images such as /opt/dptext/index."
  }
}

variable "mechanism" {
  type        = string
  description = "Mechanism (dptext --mechanism): custext, diffractor, distance_truncated_laplace, kde_prior, knn_exponential, mahalanobis, multivariate_laplace, santext, santext_plus, syntf, tem, truncated_gumbel, vickrey."
  default     = "truncated_gumbel"

  validation {
    # The mechanisms dptext implements, as in templates/metadata.json (tests/test_infra.py keeps
    # the two equal): a name the template rejects would make every scheduled launch fail.
    condition     = contains(["custext", "diffractor", "distance_truncated_laplace", "kde_prior", "knn_exponential", "mahalanobis", "multivariate_laplace", "santext", "santext_plus", "syntf", "tem", "truncated_gumbel", "vickrey"], var.mechanism)
    error_message = "mechanism must be one of: custext, diffractor, distance_truncated_laplace, kde_prior, knn_exponential, mahalanobis, multivariate_laplace, santext, santext_plus, syntf, tem, truncated_gumbel, vickrey."
  }
}

variable "epsilon" {
  type        = number
  description = "Privacy parameter of the mechanism (dptext --epsilon), > 0; every scheduled run spends it again on the documents it reads."

  validation {
    condition     = var.epsilon > 0
    error_message = "epsilon must be > 0."
  }
}

variable "extra_parameters" {
  type        = map(string)
  description = "Other `dptext run` options as template parameters, by their names in templates/metadata.json, e.g. { format = \"jsonl\", text_field = \"body\", oov = \"random\" }."
  default     = {}

  validation {
    # The optional parameters of templates/metadata.json; the five above have their own variables.
    condition     = alltrue([for name in keys(var.extra_parameters) : contains(["format", "text_field", "oov", "oov_placeholder", "case", "overwrite", "max_doc_chars", "long_docs", "batch_chars", "rebalance", "delta", "radius", "search", "search_k", "alpha", "sampler", "chain_length", "bandwidth_scale", "candidates", "regularization", "beta", "threshold", "base", "lists", "sensitive_fraction", "replace_probability", "set_size", "stop_words"], name)])
    error_message = "extra_parameters accepts: format, text_field, oov, oov_placeholder, case, overwrite, max_doc_chars, long_docs, batch_chars, rebalance, delta, radius, search, search_k, alpha, sampler, chain_length, bandwidth_scale, candidates, regularization, beta, threshold, base, lists, sensitive_fraction, replace_probability, set_size, stop_words (input, output, index, mechanism and epsilon, and the privacy unit and ledger options, have their own variables)."
  }
}

# Privacy units and the budget ledger (README.md: Privacy units, contribution bounds and the budget
# ledger). With unit_budget set, every run reads the ledger in the ledger bucket, withholds what a
# unit's remaining budget does not admit, and commits the ledger's next version: the scheduled runs
# compose instead of each spending epsilon again on the same people.

variable "privacy_unit" {
  type        = string
  description = "JSONL field or Parquet column naming the person (dptext --privacy-unit); empty: no units. Needed by max_tokens_per_unit and unit_budget."
  default     = ""
}

variable "max_tokens_per_unit" {
  type        = number
  description = "Word tokens one unit may release per run (dptext --max-tokens-per-unit); null: no per-run cap."
  default     = null

  validation {
    condition     = var.max_tokens_per_unit == null ? true : var.max_tokens_per_unit >= 1 && floor(var.max_tokens_per_unit) == var.max_tokens_per_unit
    error_message = "max_tokens_per_unit must be null or a whole number >= 1."
  }
}

variable "unit_budget" {
  type        = number
  description = "Epsilon one unit may spend over all scheduled runs (dptext --unit-budget, basic composition), kept in the ledger bucket; null: no ledger."
  default     = null

  validation {
    condition     = var.unit_budget == null ? true : var.unit_budget > 0
    error_message = "unit_budget must be null or > 0."
  }
}

variable "ledger_prefix" {
  type        = string
  description = "The budget ledger's directory inside the ledger bucket (dptext --budget-ledger)."
  default     = "ledger"
}

variable "ledger_key_secret" {
  type        = string
  description = "Secret Manager secret (created here, its value added by you) holding DPTEXT_LEDGER_KEY; the launcher reads its latest version."
  default     = "dptext-ledger-key"
}

variable "max_workers" {
  type        = number
  description = "Upper bound on Dataflow workers per run: a cap on what one scheduled run can cost."
  default     = 10

  validation {
    condition     = var.max_workers >= 1 && var.max_workers <= 1000 && floor(var.max_workers) == var.max_workers
    error_message = "max_workers must be a whole number from 1 to 1000."
  }
}

# When it runs.

variable "job_name" {
  type        = string
  description = "Dataflow job name of the scheduled runs, and name of the Cloud Scheduler job."
  default     = "dptext"

  validation {
    # Dataflow's job-name rule, kept short enough to read in the console.
    condition     = can(regex("^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$", var.job_name))
    error_message = "job_name must be 1-63 lowercase letters, digits or hyphens, starting with a letter and not ending with a hyphen."
  }
}

variable "schedule" {
  type        = string
  description = "When Cloud Scheduler launches the template, in unix-cron format (minute hour day-of-month month day-of-week), e.g. \"0 3 * * *\" for 03:00 daily."
  default     = "0 3 * * *"

  validation {
    condition     = can(regex("^\\S+(\\s+\\S+){4}$", trimspace(var.schedule)))
    error_message = "schedule must be a unix-cron expression with five fields, e.g. \"0 3 * * *\"."
  }
}

variable "time_zone" {
  type        = string
  description = "Time zone of the schedule, a tz database name, e.g. Etc/UTC or Europe/Paris."
  default     = "Etc/UTC"

  validation {
    condition     = can(regex("^[A-Za-z_]+(/[A-Za-z0-9_+-]+)*$", var.time_zone))
    error_message = "time_zone must be a tz database name such as Etc/UTC or Europe/Paris."
  }
}

variable "launch_on_apply" {
  type        = bool
  description = "Also launch one run from `terraform apply` (google_dataflow_flex_template_job). Off by default: Terraform relaunches a finished batch job on every later apply."
  default     = false
}

# How long things are kept.

variable "temp_retention_days" {
  type        = number
  description = "Days after which Dataflow temp and staging files are deleted from the temp bucket."
  default     = 7

  validation {
    condition     = var.temp_retention_days > 0 && floor(var.temp_retention_days) == var.temp_retention_days
    error_message = "temp_retention_days must be a whole number > 0."
  }
}

variable "output_nearline_days" {
  type        = number
  description = "Days after which outputs move to the Nearline storage class (cheaper to keep, dearer to read)."
  default     = 30

  validation {
    condition     = var.output_nearline_days > 0 && floor(var.output_nearline_days) == var.output_nearline_days
    error_message = "output_nearline_days must be a whole number > 0."
  }
}

variable "output_noncurrent_days" {
  type        = number
  description = "Days an output overwritten by a later run is kept as a noncurrent version before it is deleted."
  default     = 30

  validation {
    condition     = var.output_noncurrent_days > 0 && floor(var.output_noncurrent_days) == var.output_noncurrent_days
    error_message = "output_noncurrent_days must be a whole number > 0."
  }
}

variable "force_destroy" {
  type        = bool
  description = "Let `terraform destroy` delete buckets that still hold objects. Keep false except to tear everything down."
  default     = false
}
