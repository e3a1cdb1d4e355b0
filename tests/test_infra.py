"""infra/ (Terraform) checked offline: formatted; every variable and local wired; one launch shared
by the Flex Template job and the schedule; least-privilege IAM; private buckets; the names and
parameters agreed with templates/. Each check is a function of the parsed configuration that
returns its problems, so the tests can also feed it a deliberately broken copy."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import hcl2
import pytest

from dptext import pipeline

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
TEMPLATES = ROOT / "templates"
# Plain strings, plain dicts, no comments; expressions come back as "${...}".
_HCL = hcl2.SerializationOptions(strip_string_quotes=True, explicit_blocks=False, with_comments=False)


# --- reading the configuration -------------------------------------------------------------


def parse(directory: Path) -> dict[str, list]:
    """Every *.tf in directory, parsed; each top-level block list is the concatenation over files."""
    config = defaultdict(list)
    for path in sorted(directory.glob("*.tf")):
        for kind, blocks in hcl2.loads(path.read_text(), serialization_options=_HCL).items():
            config[kind].extend(blocks)
    return config


def labelled(config: dict, kind: str) -> dict[str, dict]:
    """Blocks with one label (variable, output) by name."""
    return {name: body for block in config.get(kind, []) for name, body in block.items()}


def resources(config: dict) -> list[tuple[str, str, dict]]:
    return [
        (rtype, name, body)
        for block in config.get("resource", [])
        for rtype, named in block.items()
        for name, body in named.items()
    ]


def local_values(config: dict) -> dict:
    return {name: value for block in config.get("locals", []) for name, value in block.items()}


def expressions(node) -> list[str]:
    """Every string under node that holds an expression (literal strings carry no references)."""
    if isinstance(node, dict):
        return [e for key, value in node.items() for e in expressions(key) + expressions(value)]
    if isinstance(node, list):
        return [e for item in node for e in expressions(item)]
    return [node] if isinstance(node, str) and "${" in node else []


def references(node, kind: str) -> set[str]:
    """Names X of every kind.X (var, local) referenced under node."""
    pattern = re.compile(rf"\b{kind}\.([A-Za-z_][\w-]*)")
    return {name for e in expressions(node) for name in pattern.findall(e)}


def uses(node, reference: str) -> bool:
    return any(re.search(rf"\b{re.escape(reference)}\b", e) for e in expressions(node))


# --- the checks ----------------------------------------------------------------------------


def fmt_problems(directory: Path) -> str:
    out = subprocess.run(
        ["terraform", "fmt", "-check", "-recursive", "-diff", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return "" if out.returncode == 0 else f"terraform fmt exited {out.returncode}:\n{out.stdout}{out.stderr}"


def variable_problems(config: dict) -> list[str]:
    declared = labelled(config, "variable")
    # A variable's own validation block does not count as a use of it.
    used = references({kind: blocks for kind, blocks in config.items() if kind != "variable"}, "var")
    problems = [
        f"var.{name} is used but no variable block declares it"
        for name in sorted(references(config, "var") - declared.keys())
    ]
    problems += [f"variable {name!r} is declared but never used" for name in sorted(declared.keys() - used)]
    problems += [
        f"variable {name!r} has no description"
        for name, body in declared.items()
        if not str(body.get("description", "")).strip()
    ]
    return problems


def local_problems(config: dict) -> list[str]:
    defined, used = local_values(config).keys(), references(config, "local")
    return [f"local.{name} is used but not defined in a locals block" for name in sorted(used - defined)] + [
        f"local {name!r} is defined but never used" for name in sorted(defined - used)
    ]


# Everything one launch is made of: the Flex Template job and the schedule must take each from
# the same place, so a run launched by apply and a scheduled run are the same run.
SHARED_LAUNCH = (
    "local.template_spec_path",
    "local.template_parameters",
    "local.worker_image",
    "local.temp_location",
    "local.staging_location",
    "google_service_account.worker.email",
    "var.max_workers",
)
LAUNCH_URI = "https://dataflow.googleapis.com/v1b3/projects/${var.project}/locations/${var.region}/flexTemplates:launch"


def launch_problems(config: dict) -> list[str]:
    flex = [body for rtype, _, body in resources(config) if rtype == "google_dataflow_flex_template_job"]
    schedule = [body for rtype, _, body in resources(config) if rtype == "google_cloud_scheduler_job"]
    if len(flex) != 1 or len(schedule) != 1:
        return [
            f"expected one google_dataflow_flex_template_job and one google_cloud_scheduler_job, "
            f"found {len(flex)} and {len(schedule)}"
        ]
    flex, target = flex[0], schedule[0]["http_target"][0]
    problems = []
    if flex.get("provider") != "google-beta":
        problems.append(
            "google_dataflow_flex_template_job must set provider = google-beta "
            "(the resource exists only in the beta provider)"
        )
    if flex.get("container_spec_gcs_path") != "${local.template_spec_path}":
        problems.append(
            f"google_dataflow_flex_template_job.container_spec_gcs_path must be "
            f"local.template_spec_path, not {flex.get('container_spec_gcs_path')!r}"
        )
    if not re.search(r"\bcontainerSpecGcsPath\s*=\s*local\.template_spec_path\b", target.get("body", "")):
        problems.append("the scheduler body's containerSpecGcsPath must be local.template_spec_path")
    for reference in SHARED_LAUNCH:
        for what, node in (("google_dataflow_flex_template_job", flex), ("the scheduler body", target.get("body"))):
            if not uses(node, reference):
                problems.append(f"{what} does not use {reference}")
    if target.get("uri") != LAUNCH_URI or target.get("http_method") != "POST":
        problems.append(f"the scheduler must POST to {LAUNCH_URI}, not {target.get('http_method')} {target.get('uri')}")
    if target["oauth_token"][0].get("service_account_email") != "${google_service_account.scheduler.email}":
        problems.append("the scheduler must authenticate as google_service_account.scheduler")
    return problems


IAM_RESOURCE = re.compile(r"^google_\w+_iam_(member|binding|policy)$")
BASIC_ROLES = {"roles/owner", "roles/editor", "roles/viewer"}


def iam_problems(config: dict) -> list[str]:
    problems = []
    for rtype, name, body in resources(config):
        if not IAM_RESOURCE.match(rtype):
            continue
        where, role = f"{rtype}.{name}", body.get("role")
        if not isinstance(role, str) or "${" in role:
            problems.append(f"{where}: role must be a literal role name to be checked, got {role!r}")
        elif "*" in role or role in BASIC_ROLES:
            problems.append(f"{where}: {role} is a wildcard or basic role; grant a predefined role on the resource")
        elif role == "roles/iam.serviceAccountUser" and not (
            rtype == "google_service_account_iam_member"
            and body.get("service_account_id") == "${google_service_account.worker.name}"
        ):
            problems.append(
                f"{where}: roles/iam.serviceAccountUser may only be granted on the worker service "
                f"account (google_service_account_iam_member), never project-wide"
            )
    return problems


def bucket_problems(config: dict) -> list[str]:
    problems = []
    for rtype, name, body in resources(config):
        if rtype != "google_storage_bucket":
            continue
        if body.get("uniform_bucket_level_access") is not True:
            problems.append(f"google_storage_bucket.{name}: uniform_bucket_level_access must be true")
        if body.get("public_access_prevention") != "enforced":
            problems.append(f'google_storage_bucket.{name}: public_access_prevention must be "enforced"')
    return problems


# templates/build.sh's shell variables, spelled as the Terraform expressions that mean the same.
BUILD_SH_NAMES = {
    "BUCKET": "google_storage_bucket.staging.name",
    "VERSION": "var.dptext_version",
    "REGION": "var.region",
    "PROJECT": "var.project",
    "REPOSITORY": "google_artifact_registry_repository.dptext.repository_id",
    "REGISTRY": "local.registry",
}
BUILD_SH_LOCALS = {
    "TEMPLATE": "template_spec_path",
    "REGISTRY": "registry",
    "LAUNCHER_IMAGE": "launcher_image",
    "WORKER_IMAGE": "worker_image",
}


def build_naming_problems(config: dict, build_sh: str) -> list[str]:
    """The template spec path and image names are the ones templates/build.sh writes."""
    problems, values = [], local_values(config)
    for shell_name, local in BUILD_SH_LOCALS.items():
        found = re.search(rf'^{shell_name}="(.+)"$', build_sh, flags=re.M)
        if found is None:
            problems.append(f"templates/build.sh no longer sets {shell_name}")
            continue
        expected = re.sub(r"\$\{(\w+)\}", lambda m: "${" + BUILD_SH_NAMES[m[1]] + "}", found[1])
        if values.get(local) != expected:
            problems.append(
                f"local.{local} is {values.get(local)!r}; templates/build.sh {shell_name} means {expected!r}"
            )
    return problems


def _quoted(condition: str) -> set[str]:
    return set(re.findall(r'"([^"]*)"', condition))


def parameter_problems(config: dict, metadata: dict) -> list[str]:
    """Every template parameter is reachable and named as in templates/metadata.json, and the
    mechanism list is the template's."""
    variables = labelled(config, "variable")
    offered = {p["name"] for p in metadata["parameters"]}
    explicit = set(re.findall(r"[{,]\s*(\w+)\s*=", local_values(config)["template_parameters"]))
    extra = _quoted(variables["extra_parameters"]["validation"][0]["condition"])
    problems = [
        f"template parameter {n!r} is passed but not in templates/metadata.json"
        for n in sorted((explicit | extra) - offered)
    ]
    problems += [f"template parameter {n!r} cannot be set from infra/" for n in sorted(offered - explicit - extra)]
    problems += [
        f"{n!r} has its own variable and must not be an extra_parameters key" for n in sorted(explicit & extra)
    ]
    mechanism_regex = next(p["regexes"][0] for p in metadata["parameters"] if p["name"] == "mechanism")
    template_mechanisms = set(re.fullmatch(r"\^\((.*)\)\$", mechanism_regex)[1].replace("\\", "").split("|"))
    infra_mechanisms = _quoted(variables["mechanism"]["validation"][0]["condition"])
    if infra_mechanisms != template_mechanisms:
        problems.append(
            f"var.mechanism accepts {sorted(infra_mechanisms)}; the template accepts {sorted(template_mechanisms)}"
        )
    return problems


def example_problems(config: dict, example: dict) -> list[str]:
    """terraform.tfvars.example sets every variable without a default, and only declared ones."""
    declared = labelled(config, "variable")
    required = {name for name, body in declared.items() if "default" not in body}
    missing, unknown = required - example.keys(), example.keys() - declared.keys()
    return [f"terraform.tfvars.example does not set required variable {n!r}" for n in sorted(missing)] + [
        f"terraform.tfvars.example sets undeclared variable {n!r}" for n in sorted(unknown)
    ]


# --- the real configuration passes ---------------------------------------------------------


@pytest.fixture(scope="module")
def config():
    return parse(INFRA)


@pytest.mark.skipif(shutil.which("terraform") is None, reason="the terraform binary is not installed")
def test_infra_is_terraform_fmt_clean():
    assert fmt_problems(INFRA) == ""


@pytest.mark.parametrize("check", [variable_problems, local_problems, launch_problems, iam_problems, bucket_problems])
def test_infra_passes(config, check):
    assert check(config) == []


def test_names_match_templates_build_script(config):
    assert build_naming_problems(config, (TEMPLATES / "build.sh").read_text()) == []


def test_parameters_match_template_metadata(config):
    assert parameter_problems(config, json.loads((TEMPLATES / "metadata.json").read_text())) == []


def test_example_tfvars_sets_the_required_variables(config):
    example = hcl2.loads((INFRA / "terraform.tfvars.example").read_text(), serialization_options=_HCL)
    assert example_problems(config, example) == []


def test_default_version_is_the_version_build_sh_builds(config):
    # build.sh tags with pipeline.__version__ unless VERSION is set; apply must find that spec.
    assert labelled(config, "variable")["dptext_version"]["default"] == pipeline.__version__


# --- and each check catches a broken copy --------------------------------------------------


def broken(tmp_path: Path, file: str, old: str | None, new: str) -> Path:
    """A copy of infra/ with old replaced by new in file (old None: new appended)."""
    copy = tmp_path / "infra"
    shutil.copytree(INFRA, copy, ignore=shutil.ignore_patterns(".terraform", "*.tfstate*"))
    path = copy / file
    text = path.read_text()
    if old is None:
        text += "\n" + new
    else:
        assert old in text, f"{file} no longer contains {old!r}: update this negative test"
        text = text.replace(old, new)
    path.write_text(text)
    return copy


ACT_AS_ANYONE = """resource "google_project_iam_member" "act_as_anyone" {
  project = var.project
  role    = "roles/iam.serviceAccountUser"
  member  = google_service_account.scheduler.member
}
"""


@pytest.mark.parametrize(
    "file, old, new, check, problem",
    [
        pytest.param(
            "variables.tf",
            None,
            'variable "unused_x" {\n  type        = string\n  description = "x"\n}\n',
            variable_problems,
            "variable 'unused_x' is declared but never used",
            id="unused-variable",
        ),
        pytest.param(
            "outputs.tf",
            None,
            'output "x" {\n  value = var.nope\n}\n',
            variable_problems,
            "var.nope is used but no variable block declares it",
            id="undeclared-variable",
        ),
        pytest.param(
            "variables.tf",
            None,
            'variable "undescribed" {\n  type = string\n}\n',
            variable_problems,
            "variable 'undescribed' has no description",
            id="undescribed-variable",
        ),
        pytest.param(
            "scheduler.tf",
            "local.temp_location",
            "local.tmp_location",
            local_problems,
            "local.tmp_location is used but not defined",
            id="undefined-local",
        ),
        pytest.param(
            "main.tf",
            "  labels = {",
            "  unused_label = 1\n  labels = {",
            local_problems,
            "local 'unused_label' is defined but never used",
            id="unused-local",
        ),
        pytest.param(
            "dataflow.tf",
            "  provider = google-beta\n",
            "",
            launch_problems,
            "must set provider = google-beta",
            id="no-google-beta",
        ),
        pytest.param(
            "scheduler.tf",
            "containerSpecGcsPath = local.template_spec_path",
            'containerSpecGcsPath = "gs://b/t.json"',
            launch_problems,
            "containerSpecGcsPath must be local.template_spec_path",
            id="other-template-path",
        ),
        pytest.param(
            "dataflow.tf",
            "local.worker_image",
            '"other:1"',
            launch_problems,
            "google_dataflow_flex_template_job does not use local.worker_image",
            id="other-worker-image",
        ),
        pytest.param(
            "iam.tf",
            '"roles/dataflow.worker"',
            '"roles/editor"',
            iam_problems,
            "roles/editor is a wildcard or basic role",
            id="editor-role",
        ),
        pytest.param(
            "iam.tf",
            '"roles/storage.objectAdmin"',
            '"roles/storage.*"',
            iam_problems,
            "roles/storage.* is a wildcard or basic role",
            id="wildcard-role",
        ),
        pytest.param(
            "iam.tf",
            None,
            ACT_AS_ANYONE,
            iam_problems,
            "act_as_anyone: roles/iam.serviceAccountUser may only be granted on the worker",
            id="project-wide-act-as",
        ),
        pytest.param(
            "storage.tf",
            "uniform_bucket_level_access = true",
            "uniform_bucket_level_access = false",
            bucket_problems,
            "uniform_bucket_level_access must be true",
            id="fine-grained-acl",
        ),
        pytest.param(
            "storage.tf",
            'public_access_prevention    = "enforced"',
            'public_access_prevention    = "inherited"',
            bucket_problems,
            'public_access_prevention must be "enforced"',
            id="public-bucket",
        ),
    ],
)
def test_each_check_fails_on_a_broken_copy(tmp_path, file, old, new, check, problem):
    problems = check(parse(broken(tmp_path, file, old, new)))
    assert any(problem in p for p in problems), problems


@pytest.mark.skipif(shutil.which("terraform") is None, reason="the terraform binary is not installed")
def test_fmt_check_fails_on_unformatted_file(tmp_path):
    assert "variables.tf" in fmt_problems(broken(tmp_path, "variables.tf", None, 'variable "x" {\ntype=string\n}\n'))


def test_naming_check_fails_when_infra_and_build_sh_disagree(tmp_path):
    config = parse(broken(tmp_path, "main.tf", "/templates/dptext-", "/specs/dptext-"))
    problems = build_naming_problems(config, (TEMPLATES / "build.sh").read_text())
    assert any("local.template_spec_path" in p for p in problems), problems


def test_parameter_check_fails_when_the_template_changes(config):
    metadata = json.loads((TEMPLATES / "metadata.json").read_text())
    for p in metadata["parameters"]:
        if p["name"] == "mechanism":
            p["regexes"] = ["^(multivariate_laplace|truncated_gumbel|tem)$"]
    metadata["parameters"].append({"name": "new_knob"})
    problems = parameter_problems(config, metadata)
    assert any("template parameter 'new_knob' cannot be set" in p for p in problems), problems
    assert any("var.mechanism accepts" in p for p in problems), problems


def test_example_check_fails_on_a_missing_or_unknown_variable(config):
    problems = example_problems(config, {"project": "p", "nope": 1})
    assert any("does not set required variable 'epsilon'" in p for p in problems), problems
    assert any("sets undeclared variable 'nope'" in p for p in problems), problems
