"""infra/'s budget ledger, checked offline like tests/test_infra.py: the ledger bucket never ages
out, the key's secret holds no value in Terraform (so never in its state) and only the worker reads
it, the ledger parameters join the launch only with a budget, and a cap or budget without a privacy
unit fails at plan. Each check is run on the real configuration and on a broken copy."""

from __future__ import annotations

import pytest

from tests.test_infra import INFRA, broken, labelled, local_values, parse, resources


def ledger_problems(config: dict) -> list[str]:
    problems = []
    found = {(rtype, name): body for rtype, name, body in resources(config)}
    bucket = found.get(("google_storage_bucket", "ledger"))
    if bucket is None:
        problems.append("no google_storage_bucket.ledger")
    elif bucket.get("lifecycle_rule"):
        problems.append("google_storage_bucket.ledger has a lifecycle rule: an aged-out version refunds every budget")
    if ("google_secret_manager_secret", "ledger_key") not in found:
        problems.append("no google_secret_manager_secret.ledger_key")
    for (rtype, name), body in found.items():
        if rtype == "google_secret_manager_secret_version":
            problems.append(f"{rtype}.{name}: Terraform would hold the ledger key in its state; add it with gcloud")
        if body.get("role") == "roles/secretmanager.secretAccessor" and not (
            rtype == "google_secret_manager_secret_iam_member"
            and body.get("secret_id") == "${google_secret_manager_secret.ledger_key.secret_id}"
            and body.get("member") == "${google_service_account.worker.member}"
        ):
            problems.append(f"{rtype}.{name}: secretAccessor only on the ledger key's secret, only for the worker")
    parameters = local_values(config)["template_parameters"]
    for name in ("budget_ledger", "unit_budget", "ledger_key_secret"):
        if f"{name} = var.unit_budget == null ? null :" not in parameters:
            problems.append(f"template parameter {name} must be passed only when var.unit_budget is set")
    scheduler = next((b for (t, _), b in found.items() if t == "google_cloud_scheduler_job"), {})
    conditions = [
        str(p.get("condition", ""))
        for lifecycle in scheduler.get("lifecycle", [])
        for p in lifecycle.get("precondition", [])
    ]
    if not any("var.privacy_unit" in c and "var.unit_budget" in c for c in conditions):
        problems.append("the schedule needs a precondition: a cap or budget without privacy_unit fails at plan")
    if "ledger_key_secret" not in labelled(config, "variable"):
        problems.append("no variable ledger_key_secret")
    return problems


def test_the_ledger_is_wired_as_stated():
    assert ledger_problems(parse(INFRA)) == []


@pytest.mark.parametrize(
    "file,old,new,problem",
    [
        (
            "storage.tf",
            'resource "google_storage_bucket" "ledger" {\n',
            'resource "google_storage_bucket" "ledger" {\n  lifecycle_rule {\n    condition {\n      age = 30\n'
            '    }\n    action {\n      type = "Delete"\n    }\n  }\n',
            "has a lifecycle rule",
        ),
        (
            "storage.tf",
            None,
            'resource "google_secret_manager_secret_version" "key" {\n'
            "  secret      = google_secret_manager_secret.ledger_key.id\n"
            '  secret_data = "in the state"\n}\n',
            "would hold the ledger key in its state",
        ),
        (
            "iam.tf",
            None,
            'resource "google_project_iam_member" "all_secrets" {\n  project = var.project\n'
            '  role    = "roles/secretmanager.secretAccessor"\n  member  = google_service_account.worker.member\n}\n',
            "secretAccessor only on the ledger key's secret",
        ),
        (
            "main.tf",
            "ledger_key_secret   = var.unit_budget == null ? null :",
            "ledger_key_secret   =",
            "ledger_key_secret must be passed only when var.unit_budget is set",
        ),
        (
            "scheduler.tf",
            '(var.unit_budget == null && var.max_tokens_per_unit == null) || var.privacy_unit != ""',
            "true",
            "the schedule needs a precondition",
        ),
    ],
)
def test_each_ledger_check_fails_on_a_broken_copy(tmp_path, file, old, new, problem):
    problems = ledger_problems(parse(broken(tmp_path, file, old, new)))
    assert any(problem in p for p in problems), problems
