"""templates/metadata.json against the clipbeam command line: every option is a parameter, no
parameter is stale, and every regex accepts what the launcher accepts and rejects what it rejects.

The expected parameters are read from the parser at test time, so an option added to
``pipeline/options.py`` fails here until ``python -m templates.write_metadata`` is run.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

from clipbeam.pipeline.options import LaunchError
from templates import launcher

JOB_KINDS = launcher.template_jobs()

METADATA_PATH = Path(launcher.__file__).with_name("metadata.json")
METADATA = json.loads(METADATA_PATH.read_text(encoding="utf-8"))
PARAMETERS = {p["name"]: p for p in METADATA["parameters"]}


def _actions() -> dict[str, dict[str, argparse.Action]]:
    """dest -> {job: action} for every option of every job, straight from the parsers (an alias,
    search's --against-column, is its option's parameter)."""
    found: dict[str, dict[str, argparse.Action]] = {}
    for job, job_parser in launcher.job_parsers().items():
        for action in job_parser._actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction):
                found.setdefault(action.dest, {}).setdefault(job, action)
    return found


ACTIONS = _actions()
JOBS = JOB_KINDS
PARAMETER_OF = {dest: ("class_labels" if dest == "labels" else dest) for dest in ACTIONS}


def test_metadata_json_is_generated_from_the_current_parser():
    from templates.write_metadata import render

    assert METADATA_PATH.read_text(encoding="utf-8") == render(), (
        "templates/metadata.json is stale: run `python -m templates.write_metadata`"
    )


def test_every_option_is_a_parameter_and_no_parameter_is_stale():
    assert set(PARAMETERS) == {"job", *PARAMETER_OF.values()}
    assert PARAMETERS["job"]["isOptional"] is False
    for dest, by_job in ACTIONS.items():
        parameter = PARAMETERS[PARAMETER_OF[dest]]
        required = all(a.required for a in by_job.values()) and len(by_job) == len(JOBS)
        assert parameter["isOptional"] is not required, dest
        if len(by_job) < len(JOBS):
            assert parameter["parentName"] == "job"
            assert parameter["parentTriggerValues"] == list(by_job)
        else:
            assert "parentName" not in parameter


def test_no_parameter_is_taken_by_beam_or_dataflow():
    # Dataflow's launcher passes pipeline options (--labels, --job_name...) in the same argv.
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    beam = _BeamArgumentParser(allow_abbrev=False, add_help=False)
    for cls in {str(c): c for c in PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(beam)
    beam_options = {s.lstrip("-") for a in beam._actions for s in a.option_strings}
    assert not set(PARAMETERS) & beam_options
    assert "labels" in beam_options  # why classify's labels are the class_labels parameter


def test_metadata_follows_dataflows_schema():
    templates = pytest.importorskip(
        "google.cloud.dataflow_v1beta3.types.templates", reason="google-cloud-dataflow-client"
    )
    # Unknown or misspelled fields raise here, as they would at `flex-template build`.
    parsed = templates.TemplateMetadata.from_json(METADATA_PATH.read_text(encoding="utf-8"))
    assert [p.name for p in parsed.parameters] == list(PARAMETERS)
    for parameter in parsed.parameters:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", parameter.name)
        assert parameter.label and parameter.help_text.endswith(".")


# -- regexes against the launcher ---------------------------------------------------------------

# Values the launcher accepts and values it refuses, by the kind of an option's value. Each bad
# value must be refused by the regex (so the Dataflow console refuses it) and by the launcher.
GOOD = {
    "int": ["1", "2"],
    "float": ["1", "1.0", "1e0"],
    "_bool": ["true", "False", "1", "no"],
    "_column": ["caption", "none", "my column"],
    "_column_name": ["caption", "my column"],
    "_eps_list": ["0.03", "0.01,0.05", " 1e-2 , 0.1"],
    "_names": ["cat", "cat, dog", " a ,b"],
    "_schemes": ["gs", "gs, https"],
    "_byte_count": ["1048576", "64MiB", "50MB"],
    "gcs": ["gs://bucket-a/in/*.parquet", "gs://bucket-a/labels.txt"],
    "model": ["gs://bucket-a/models/clip-vit-base-patch16", "demo-clip"],
    "template": ["a photo of a {}.", "{}"],
    "head_pairs": ["a=gs://bucket-a/heads/a", "a=gs://b/x.pth, nsfw=gs://b/n.safetensors"],
    "head_thresholds": ["a=5", "a=-0.5", "a=1e-3"],
}
BAD = {
    "int": ["abc", "1.5", ""],
    "float": ["abc", "1.2.3", "nan", ""],
    "_bool": ["maybe"],
    "_column": ["", " "],
    "_column_name": ["", " "],
    "_eps_list": ["abc", "0.1,,0.2", "0.1,", ""],
    "_names": ["a,,b", "a,", ""],
    "_schemes": ["gs,,https", ""],
    "_byte_count": ["lots", "-5"],
    "gcs": ["/tmp/data", "data/*.parquet", "file:///tmp/x"],
    "model": ["/models/clip", "openai/clip-vit-base-patch32", "file:///models/clip"],
    "template": ["a photo"],
    "choices": ["bogus", ""],
    "head_pairs": ["a", "=gs://b/x", "a=/tmp/h.pth", "9a=gs://b/x", "a=gs://b/x,", ""],
    "head_thresholds": ["a", "a=x", "a=nan", "a=1,,a=2", ""],
}

# What a parameter needs beside it to make a valid job, by (job, dest).
BASE = [
    "--input=gs://bucket-a/in/*.parquet",
    "--output=gs://bucket-a/out",
    "--model=gs://bucket-a/models/clip",
]
# Good values of options whose range leaves out some of GOOD's.
GOOD_BY_DEST = {"max_cluster_rows": ["2", "50000"], "against_eps": ["0.05", "0", "1e-2"]}
COMPANIONS = {
    "filter": ["--min_image_side=1"],
    "classify": ["--class_labels=cat,dog"],
    "search": ["--queries=a cat"],
}
WITH = {
    "reject_concepts": ["--concept_threshold=0.3"],
    "concept_threshold": ["--reject_concepts=watermark"],
    "min_image_side": ["--min_score=0.1"],
    "min_head": ["--head=a=gs://bucket-a/heads/a"],
    "max_head": ["--head=a=gs://bucket-a/heads/a"],
    "against_image_column": [
        "--against=gs://bucket-a/ref/*.parquet",
        "--model=gs://bucket-a/models/clip",
        "--image_column=image",
    ],
}


def _kind(action: argparse.Action) -> str:
    if action.choices is not None:
        return "choices"
    name = launcher._type_name(action)
    if name == "str":
        return {"model": "model", "template": "template"}.get(action.dest, "gcs")
    return name


def _launcher_accepts(job: str, dest: str, value: str) -> bool:
    name = PARAMETER_OF[dest]
    extra = [a for a in COMPANIONS.get(job, []) if not a.startswith(f"--{name}=")]
    if dest in ("labels_file", "queries_file", "query_images"):
        extra = []
    base = BASE[:2] if job == "dedup" else BASE  # dedup's model is for raw images only
    args = [a for a in base if not a.startswith(f"--{name}=")]
    argv = [f"--job={job}", *args, *extra, *WITH.get(dest, []), f"--{name}={value}"]
    try:
        launcher.check_call(launcher.translate(argv), read_text=lambda path: "cat\ndog\n")
    except LaunchError:
        return False
    return True


@pytest.mark.parametrize("dest", list(ACTIONS))
def test_regexes_accept_defaults_and_good_values_and_reject_bad_ones(dest):
    by_job = ACTIONS[dest]
    # embed takes every shared option in any value; otherwise the last job that has it.
    job = "embed" if "embed" in by_job else list(by_job)[-1]
    action = by_job[job]
    kind = _kind(action)
    if kind != "choices" and kind not in GOOD:
        pytest.fail(f"--{dest} has values of kind {kind}: add good and bad examples to this test")
    regexes = [re.compile(r) for r in PARAMETERS[PARAMETER_OF[dest]]["regexes"]]
    assert regexes

    def matches(value: str) -> bool:
        return all(r.fullmatch(value) for r in regexes)

    defaults = {launcher._as_value(a.default, a) for a in by_job.values()} - {None}
    for value in defaults:
        assert matches(value), f"{dest}: the regex refuses the default {value!r}"
    good = list(action.choices) if kind == "choices" else GOOD_BY_DEST.get(dest, GOOD[kind])
    for value in good:
        assert matches(value), f"{dest}: the regex refuses {value!r}"
        assert _launcher_accepts(job, dest, value), f"{dest}: the launcher refuses {value!r}"
    for value in BAD[kind]:
        assert not matches(value), f"{dest}: the regex accepts {value!r}"
        assert not _launcher_accepts(job, dest, value), f"{dest}: the launcher accepts {value!r}"


def test_job_regex():
    (regex,) = PARAMETERS["job"]["regexes"]
    assert all(re.fullmatch(regex, job) for job in JOBS) and "dedup" in JOBS
    assert not re.fullmatch(regex, "rank")
