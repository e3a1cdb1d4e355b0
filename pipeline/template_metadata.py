"""Dataflow Flex Template metadata, generated from DPTextOptions (one source for CLI and template).

    dptext template-metadata [--out templates/metadata.json] [--check]

`validate_metadata` is stricter than `gcloud dataflow flex-template build`, which accepts unknown
keys and any paramType.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

TEMPLATE_NAME = "dptext"
# Relative to the working directory (the repository root): an installed dptext has no templates/.
DEFAULT_PATH = Path("templates") / "metadata.json"
REQUIRED = ("input", "output", "index", "epsilon")
EXCLUDED = ("test_seed",)  # test-only: a scheduled production job must never run with a fixed seed
# Parameter types the Dataflow template metadata accepts (TemplateMetadata.ParameterMetadata.paramType).
PARAM_TYPES = {
    "DEFAULT",
    "TEXT",
    "GCS_READ_BUCKET",
    "GCS_WRITE_BUCKET",
    "GCS_READ_FILE",
    "GCS_WRITE_FILE",
    "GCS_READ_FOLDER",
    "GCS_WRITE_FOLDER",
    "PUBSUB_TOPIC",
    "PUBSUB_SUBSCRIPTION",
    "BIGQUERY_TABLE",
    "JAVASCRIPT_UDF_FILE",
    "SERVICE_ACCOUNT",
    "MACHINE_TYPE",
    "KMS_KEY_NAME",
    "WORKER_REGION",
    "WORKER_ZONE",
    "BOOLEAN",
    "ENUM",
    "NUMBER",
    "KAFKA_TOPIC",
    "KAFKA_READ_TOPIC",
    "KAFKA_WRITE_TOPIC",
}
TOP_KEYS = {
    "name",
    "description",
    "parameters",
    "streaming",
    "supportsAtLeastOnce",
    "supportsExactlyOnce",
    "defaultStreamingMode",
}
PARAM_KEYS = {
    "name",
    "label",
    "helpText",
    "isOptional",
    "regexes",
    "paramType",
    "defaultValue",
    "parentName",
    "parentTriggerValues",
    "groupName",
    "enumOptions",
    "customMetadata",
    "hiddenUi",
}
NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9_]*$")
_NUMBER = r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$"
_INTEGER = r"^[+-]?\d+$"


def _parameter_name(action: argparse.Action) -> str:
    """The template parameter: the underscore spelling of the option (hyphens are not allowed)."""
    longs = [o[2:] for o in action.option_strings if o.startswith("--")]
    return next((o for o in longs if "-" not in o), longs[0].replace("-", "_"))


def _regex(action: argparse.Action) -> list[str]:
    choices = action.choices
    if action.dest == "mechanism":  # validated at the door rather than by argparse
        from dptext.transforms.mechanisms import NAMES as choices
    if choices:
        return ["^(" + "|".join(re.escape(str(c)) for c in choices) + ")$"]
    from dptext.pipeline.options import parse_bool

    if action.type is parse_bool:
        return ["^(true|false|1|0|yes|no)$"]
    if action.type is float:
        return [_NUMBER]
    if action.type is int:
        return [_INTEGER]
    return []


def build_metadata() -> dict:
    from dptext.pipeline.options import DPTextOptions

    parser = argparse.ArgumentParser(add_help=False)
    DPTextOptions._add_argparse_args(parser)
    parameters = []
    for action in parser._actions:
        name = _parameter_name(action)
        if name in EXCLUDED:
            continue
        param = {
            "name": name,
            "label": name.replace("_", " ").capitalize(),
            "helpText": action.help,
            "isOptional": name not in REQUIRED,
            "paramType": "TEXT",
        }
        if action.default is not None and name not in REQUIRED:
            default = action.default
            param["defaultValue"] = str(default).lower() if isinstance(default, bool) else str(default)
        regexes = _regex(action) or (["^.+$"] if name in REQUIRED else [])
        if regexes:
            param["regexes"] = regexes
        parameters.append(param)
    return {
        "name": TEMPLATE_NAME,
        "description": "Privatize a text corpus with word-level differential privacy (dptext run).",
        "parameters": parameters,
    }


def validate_metadata(meta: dict) -> list[str]:
    """Every problem with a metadata document; empty when it is valid."""
    problems = [f"unknown top-level key {k!r}" for k in sorted(set(meta) - TOP_KEYS)]
    for key in ("name", "description"):
        if not isinstance(meta.get(key), str) or not meta[key]:
            problems.append(f"{key!r} must be a non-empty string")
    params = meta.get("parameters")
    if not isinstance(params, list):
        return problems + ["'parameters' must be a list"]
    seen = set()
    for i, p in enumerate(params):
        where = f"parameter {i} ({p.get('name', '?')})"
        problems += [f"{where}: unknown key {k!r}" for k in sorted(set(p) - PARAM_KEYS)]
        if not NAME.match(str(p.get("name", ""))):
            problems.append(f"{where}: name must match {NAME.pattern}")
        if p.get("name") in seen:
            problems.append(f"{where}: duplicate name")
        seen.add(p.get("name"))
        for key in ("label", "helpText"):
            if not isinstance(p.get(key), str) or not p[key].strip():
                problems.append(f"{where}: {key!r} must be a non-empty string")
        if not isinstance(p.get("isOptional"), bool):
            problems.append(f"{where}: 'isOptional' must be true or false")
        if p.get("paramType", "DEFAULT") not in PARAM_TYPES:
            problems.append(f"{where}: paramType {p.get('paramType')!r} is not one of Dataflow's types")
        for rx in p.get("regexes", []):
            try:
                compiled = re.compile(rx)
            except re.error as err:
                problems.append(f"{where}: regex {rx!r} does not compile ({err})")
                continue
            if "defaultValue" in p and not compiled.search(p["defaultValue"]):
                problems.append(f"{where}: default {p['defaultValue']!r} fails its own regex {rx!r}")
    return problems


def render(meta: dict) -> str:
    return json.dumps(meta, indent=2, ensure_ascii=False) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="dptext template-metadata", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--check", action="store_true", help="fail if --out differs from the options")
    args = parser.parse_args(argv)
    meta = build_metadata()
    problems = validate_metadata(meta)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    if args.check:
        if not args.out.is_file() or args.out.read_text(encoding="utf-8") != render(meta):
            print(f"{args.out} is out of date with DPTextOptions; run `dptext template-metadata`", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(render(meta), encoding="utf-8")
    print(f"wrote {args.out} ({len(meta['parameters'])} parameters)")
    return 0
