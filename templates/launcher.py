"""The Dataflow Flex Template entry point: template parameters in, a submitted clipbeam job out.

Dataflow's template launcher runs this file (the image's ``FLEX_TEMPLATE_PYTHON_PY_FILE``) with
every template parameter as ``--name=value``, after the pipeline options it sets itself
(``--runner``, ``--project``, ``--region``, ``--job_name``, ``--temp_location``,
``--template_location``, ``--sdk_container_image``, ``--labels``...). :func:`translate` turns that
into a ``clipbeam JOB ...`` command line:

- the ``job`` parameter (embed, score, filter, classify, search or dedup) becomes the subcommand;
- ``class_labels`` becomes classify's ``--labels``. Dataflow passes the job's own labels as
  ``--labels={"key": "value"}``, so a template parameter cannot be called ``labels``: every
  ``--labels`` the launcher receives is a Dataflow job label and goes to Beam untouched;
- ``name=true`` / ``name=false`` of an on/off option becomes the bare flag, or its ``--no-``
  form (``--no-compile``; nothing for an option without one);
- everything else passes through: clipbeam accepts its options spelled with underscores, and
  whatever clipbeam does not define is a Beam pipeline option.

Workers are other machines than the launcher: :func:`check_remote` refuses local paths for the
input, output, model and labels file, which no worker could read (for search also the queries
file, the query images and ``keep_from``: :func:`check_search`).

``templates/metadata.json`` describes the parameters to Dataflow. :func:`template_metadata`
derives it from the clipbeam parser; regenerate the file after changing an option with::

    python -m templates.write_metadata
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CLASS_LABELS",
    "JOB",
    "TemplateCall",
    "check_call",
    "check_remote",
    "check_search",
    "launch",
    "main",
    "template_jobs",
    "template_metadata",
    "translate",
]

# Template parameters that are not clipbeam options of the same name.
JOB = "job"
CLASS_LABELS = "class_labels"
# clipbeam option (by argparse dest) -> template parameter, where the names must differ.
_RENAMED = {"labels": CLASS_LABELS}

# A gs:// URL: a bucket, then optionally an object path, folder or glob.
_GCS_URL = r"^gs://[^/\s]+(?:/.*)?$"
# The job that is not one of clipbeam.pipeline.options.JOB_KINDS (its own parser and run).
DEDUP = "dedup"


# -- from template parameters to a clipbeam command line --------------------------------------


@dataclass(frozen=True)
class TemplateCall:
    """A template invocation, translated.

    Attributes:
        command: the ``clipbeam`` command line (subcommand first, then its options and any Beam
            pipeline options).
        job_labels: the Dataflow job labels the launcher passed as ``--labels`` values, kept
            apart so classify's ``--labels`` can never take them.
    """

    command: tuple[str, ...]
    job_labels: tuple[str, ...]

    def beam_label_args(self) -> list[str]:
        """The job labels as Beam ``--labels`` arguments."""
        return [f"--labels={label}" for label in self.job_labels]


def template_jobs() -> tuple[str, ...]:
    """The jobs the template runs: the per-row jobs, then search and dedup."""
    from clipbeam.pipeline.options import JOB_KINDS

    return (*JOB_KINDS, "search", DEDUP)


def _template_parser() -> argparse.ArgumentParser:
    from clipbeam.pipeline.options import LaunchError

    class Parser(argparse.ArgumentParser):
        def error(self, message: str):  # type: ignore[override]
            raise LaunchError(f"template parameters: {message}")

    parser = Parser(prog="clipbeam template", add_help=False, allow_abbrev=False)
    parser.add_argument(f"--{JOB}", choices=template_jobs())
    parser.add_argument(f"--{CLASS_LABELS}")
    # Dataflow's job labels: a JSON object per value, or key=value (see Beam's --labels).
    parser.add_argument("--labels", action="append", default=[])
    return parser


def _flags(job: str) -> dict[str, str | None]:
    """``job``'s on/off options (options that take no value): each option string that turns one
    on, to the option string that turns it off (``--no-compile``), or ``None`` where leaving the
    option out does."""
    flags: dict[str, str | None] = {}
    for action in _job_actions(job):
        if action.nargs != 0:
            continue
        negative = [s for s in action.option_strings if s.startswith(("--no-", "--no_"))]
        for option in action.option_strings:
            if option in negative:
                continue
            off = f"--no-{option[2:]}"
            flags[option] = off if off in negative else (negative[0] if negative else None)
    return flags


def translate(argv: Sequence[str]) -> TemplateCall:
    """Turns the arguments Dataflow's template launcher passes into a clipbeam command line.

    Args:
        argv: the launcher's arguments, e.g. ``["--runner=DataflowRunner", "--job=score",
            "--input=gs://b/in/*.parquet", '--labels={"team": "data"}', ...]``.

    Returns:
        The clipbeam command line and, apart, the Dataflow job labels.

    Raises:
        LaunchError: no ``job`` parameter, or ``class_labels`` for a job other than classify.
    """
    from clipbeam.pipeline.options import LaunchError

    known, rest = _template_parser().parse_known_args(list(argv))
    if known.job is None:
        raise LaunchError(
            f"the template needs the {JOB} parameter: one of {', '.join(template_jobs())} "
            f"(e.g. --parameters {JOB}=score)"
        )
    if known.class_labels is not None and known.job != "classify":
        raise LaunchError(
            f"{CLASS_LABELS} is a parameter of the classify job, not {known.job}; leave it out"
        )
    flags = _flags(known.job)
    command = [known.job]
    for arg in rest:
        name, has_value, value = arg.partition("=")
        if has_value and name in flags:
            # Flex Templates pass every parameter with a value; an on/off option takes none.
            # false must say so where the option has a --no- form: its default may be "decide".
            off = flags[name]
            if _parse_bool(value, name):
                command.append(name)
            elif off is not None:
                command.append(off)
            continue
        command.append(arg)
    if known.class_labels is not None:
        command.append(f"--labels={known.class_labels}")
    return TemplateCall(command=tuple(command), job_labels=tuple(known.labels))


def _parse_bool(text: str, name: str) -> bool:
    from clipbeam.pipeline.options import LaunchError

    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off", ""):
        return False
    raise LaunchError(f"{name} takes true or false, got {text!r}")


def check_remote(parsed: Any) -> None:
    """Refuses paths that only exist on the launcher: every worker is another machine.

    :func:`clipbeam.pipeline.validate.check_remote`, which every Dataflow launch runs, with the
    template's parameter names; a template also refuses a local labels file (the launcher's
    container holds none of the user's files).

    Args:
        parsed: the :class:`clipbeam.pipeline.arguments.ParsedArgs` of the job.

    Raises:
        LaunchError: the input, output, model or labels file is a local path (or a file:// URL).
            A model may also be a checkpoint bundled with clipbeam (it is in the image).
    """
    from clipbeam.pipeline.validate import check_remote as check

    check(
        parsed.spec,
        parsed.inputs,
        labels_file=parsed.labels_file,
        name=lambda option: option.replace("-", "_"),
    )


def check_search(command: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """A search's arguments checked as the template launcher can, before reading anything: the
    options and their values, then every path a worker or the launcher reads as a gs:// URL.

    Args:
        command: the translated command line, ``["search", ...]``.

    Returns:
        The option values and Beam's arguments (:func:`clipbeam.pipeline.search.parse_values`).

    Raises:
        LaunchError: a bad option or value, or a local path (naming the parameter).
    """
    from types import SimpleNamespace

    from clipbeam.pipeline.options import LaunchError
    from clipbeam.pipeline.search import make_spec, parse_values
    from clipbeam.pipeline.validate import check_remote as check

    values, beam_args = parse_values(list(command[1:]))
    # The queries are read later, on the launcher: the spec is checked with a stand-in.
    spec = make_spec(values, [q for q in values["queries"] if q] or ["?"])
    check(
        SimpleNamespace(output=spec.output, model=spec.model, heads=()),
        values["input"],
        name=lambda option: option.replace("-", "_"),
    )
    paths = [("queries_file", values["queries_file"])] if values["queries_file"] else []
    paths += [(option, p) for option in ("query_images", "keep_from") for p in values[option]]
    for option, path in paths:
        if not path.startswith("gs://"):
            raise LaunchError(
                f"{option} {path!r} is a local path, but on Dataflow every worker is a "
                "different machine that cannot read the launcher's disk: pass a gs:// URL"
            )
    return values, beam_args


def _launch_search(call: TemplateCall) -> Any:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from clipbeam.pipeline.search import run

    _, beam_args = check_search(call.command)
    options = PipelineOptions([*beam_args, *call.beam_label_args()])
    return run(list(call.command[1:]), test_pipeline=beam.Pipeline(options=options), wait=False)


def check_call(call: TemplateCall, read_text: Any = None) -> tuple[list[str], Any]:
    """Parses a translated call and refuses local paths (:func:`check_remote`).

    Args:
        call: what :func:`translate` returned.
        read_text: reads a labels file (tests pass a stand-in); the default reads it.

    Returns:
        ``(Beam arguments, the parsed job)``: the per-row jobs' ``ParsedArgs``, dedup's
        ``(spec, inputs)``, or search's option values.
    """
    from clipbeam.pipeline.validate import check_remote as check

    if call.command[0] == "search":
        values, beam_args = check_search(call.command)
        return beam_args, values
    if call.command[0] == DEDUP:
        from clipbeam.pipeline.dedup_launch import parse

        spec, inputs, beam_args = parse(call.command[1:])
        check(spec, inputs, name=lambda option: option.replace("-", "_"))
        return beam_args, (spec, inputs)
    from clipbeam.pipeline.arguments import parse_args

    parsed = parse_args(call.command, **({} if read_text is None else {"read_text": read_text}))
    check_remote(parsed)
    return list(parsed.beam_args), parsed


def launch(argv: Sequence[str]) -> Any:
    """Validates and submits (or, under a template launcher, stages) one clipbeam job.

    Args:
        argv: the template launcher's arguments (see :func:`translate`).

    Returns:
        Beam's ``PipelineResult``. Under a template launcher (``--template_location``) the job
        is written there for Dataflow to start; nothing waits for it to finish.

    Raises:
        LaunchError: a problem found before anything was submitted.
    """
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from clipbeam.pipeline.cli import run

    call = translate(argv)
    if call.command[0] == "search":
        return _launch_search(call)
    beam_args, _ = check_call(call)
    # The pipeline is built here so that the Dataflow job labels reach Beam's options without
    # ever passing through clipbeam's parser, where classify's --labels would take them.
    options = PipelineOptions([*beam_args, *call.beam_label_args()])
    pipeline = beam.Pipeline(options=options)
    if call.command[0] == DEDUP:
        from clipbeam.pipeline.dedup import run as run_dedup

        return run_dedup(call.command[1:], test_pipeline=pipeline, wait=False)
    return run(call.command, test_pipeline=pipeline, wait=False)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs :func:`launch`; a launch error is printed as one line and exits with status 2."""
    from clipbeam.pipeline.options import LaunchError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        launch(sys.argv[1:] if argv is None else argv)
    except LaunchError as exc:
        print(f"clipbeam template: error: {exc}", file=sys.stderr)
        return 2
    return 0


# -- metadata.json from the clipbeam parser -----------------------------------------------------

# Regexes (anchored, in the syntax Java and Python share) by the name of an option's value type.
_INT = r"^[+-]?[0-9]+$"
_FLOAT = r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$"
_BOOL = r"^(?i:true|false|yes|no|on|off|1|0)$"
_LIST = r"^\s*[^,\s][^,]*(?:,\s*[^,\s][^,]*)*$"  # comma-separated, no empty entry
_NUMBER = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_HEAD = r"[A-Za-z_][A-Za-z0-9_]*=gs://[^/,\s]+/[^,\s]*"  # NAME=gs://bucket/path
_THRESHOLD = rf"[A-Za-z_][A-Za-z0-9_]*={_NUMBER}"  # NAME=X
_HEADS = rf"^\s*{_HEAD}(?:\s*,\s*{_HEAD})*\s*$"  # comma-separated
_THRESHOLDS = rf"^\s*{_THRESHOLD}(?:\s*,\s*{_THRESHOLD})*\s*$"
_REGEX_BY_TYPE = {
    "int": _INT,
    "float": _FLOAT,
    "_bool": _BOOL,
    "_column": r"^\S(?:.*\S)?$",
    "_column_name": r"^\S(?:.*\S)?$",
    "_names": _LIST,
    "_eps_list": rf"^\s*{_NUMBER}(?:\s*,\s*{_NUMBER})*\s*$",  # comma-separated numbers
    "_schemes": _LIST,
    "_byte_count": r"^\s*[0-9]+\s*[A-Za-z]*\s*$",  # units are checked by the launcher
    "head_pairs": _HEADS,
    "head_thresholds": _THRESHOLDS,
}
# Plain string options, by dest.
_REGEX_BY_DEST = {
    "input": _GCS_URL,
    "output": _GCS_URL,
    "labels_file": _GCS_URL,
    "queries_file": _GCS_URL,
    "query_images": _GCS_URL,
    "keep_from": _GCS_URL,
    "template": r"^.*\{\}.*$",
    "against": _GCS_URL,
}
# Dataflow's input pickers, by dest (the rest are TEXT). Only types that never pre-fill a value:
# a BOOLEAN or NUMBER picker would send false or 0 for a parameter the user left alone.
# Value types that take several comma-separated values in one parameter.
_LIST_TYPES = ("_names", "_schemes", "head_pairs", "head_thresholds", "_eps_list")
_PARAM_TYPE_BY_DEST = {
    "output": "GCS_WRITE_FOLDER",
    "labels_file": "GCS_READ_FILE",
    "queries_file": "GCS_READ_FILE",
}
_LABEL_WORDS = {"id": "ID", "http": "HTTP", "url": "URL", "k": "K"}
# Help that differs from the command line's: on Dataflow, paths are gs:// URLs and a parameter
# holds one value.
_TEMPLATE_HELP = {
    "input": "Parquet input on Cloud Storage: a file, a glob or a folder, e.g. "
    "gs://bucket/data/*.parquet.",
    "output": "Output folder on Cloud Storage, e.g. gs://bucket/out/run1. It must hold no "
    "earlier results unless resume is true.",
    "model": "Checkpoint folder in the Hugging Face layout on Cloud Storage, e.g. "
    "gs://bucket/models/clip-vit-base-patch16 (each worker fetches it once and caches it), or a "
    "bundled demo model: demo-clip, demo-chinese-clip. For dedup, only to embed raw images "
    "(named by image_column) instead of reading embedding_column.",
    "labels_file": "A UTF-8 text file on Cloud Storage with one label per line; not with "
    "class_labels.",
    "head": "Learned heads on the image embedding, NAME=gs://bucket/heads/NAME, several "
    "comma-separated: a clipbeam head folder (head.json + head.safetensors), or LAION's aesthetic "
    "predictor or NeMo Curator's NSFW detector as .pth or .safetensors. Each writes a float32 "
    "column NAME.",
    "template": "Prompt template with one {} where the label (classify), the concept (filter) or "
    "the query (search) goes. Default: 'a photo of a {}.'; for search '{}', the query as written.",
    "queries_file": "A UTF-8 text file on Cloud Storage with one query per line; not with "
    "queries or query_images.",
    "query_images": "Image queries on Cloud Storage: Parquet with an image column, or image "
    "files, e.g. gs://bucket/queries/*.jpg.",
    "keep_from": "Parquet on Cloud Storage the keep_columns are joined from by id (default: "
    "the input), e.g. the dataset embed read.",
    "against": "Embeddings of a reference set (an evaluation set) on Cloud Storage, e.g. "
    "gs://bucket/eval/embeddings/*.parquet, or its images with against_image_column: rows near "
    "one of them are removed.",
}

_DESCRIPTION = (
    "CLIP and Chinese-CLIP over image-text Parquet datasets: embeddings (embed), image-text "
    "similarity scores (score), filtering (filter), zero-shot labels (classify), the rows best "
    "matching text or image queries (search) and exact and semantic deduplication (dedup), "
    "written back as Parquet under the output folder with errors/ and summary.json."
)


def job_parsers() -> dict[str, argparse.ArgumentParser]:
    """Each template job's argument parser, by job."""
    from clipbeam.pipeline.dedup_launch import build_parser as dedup_parser
    from clipbeam.pipeline.options import build_parser
    from clipbeam.pipeline.search import build_parser as search_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {**sub.choices, "search": search_parser(), DEDUP: dedup_parser()}


def _job_actions(job: str) -> Iterator[argparse.Action]:
    seen = set()
    for action in job_parsers()[job]._actions:
        # An alias of another option (search's --against-column) is the same parameter.
        if action.dest in seen:
            continue
        if action.option_strings and not isinstance(action, argparse._HelpAction):
            seen.add(action.dest)
            yield action


def _type_name(action: argparse.Action) -> str:
    if action.nargs == 0:
        return "_bool"
    return getattr(action.type, "__name__", "str") if action.type is not None else "str"


def _regex(action: argparse.Action) -> str | None:
    if action.choices is not None:
        return "^(?:" + "|".join(re.escape(str(c)) for c in action.choices) + ")$"
    kind = _type_name(action)
    if kind in _REGEX_BY_TYPE:
        return _REGEX_BY_TYPE[kind]
    if kind == "str":
        if action.dest == "model":
            from clipbeam.model.hub import BUNDLED

            return r"^(?:gs://[^/\s]+/.+|" + "|".join(re.escape(b) for b in BUNDLED) + ")$"
        if action.dest in _REGEX_BY_DEST:
            return _REGEX_BY_DEST[action.dest]
    raise ValueError(
        f"the template cannot describe --{action.dest.replace('_', '-')}: its values are of a "
        f"type ({kind}) that templates/launcher.py has no regex for. Add one to _REGEX_BY_TYPE "
        "(or _REGEX_BY_DEST for a plain string), then run `python -m templates.write_metadata`."
    )


def _as_value(value: Any, action: argparse.Action) -> str | None:
    """A default as a user would type it as a parameter, or ``None`` for no default."""
    from clipbeam.pipeline.options import NONE

    if value is None:
        return NONE if _type_name(action) == "_column" else None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value) or None
    return str(value)


def _words(jobs: Sequence[str]) -> str:
    return jobs[0] if len(jobs) == 1 else f"{', '.join(jobs[:-1])} and {jobs[-1]}"


def _help_text(
    action: argparse.Action, jobs: list[str], defaults: dict[str, list[str]], names: dict[str, str]
) -> str:
    all_jobs = template_jobs()
    if action.dest in _TEMPLATE_HELP:
        text = _TEMPLATE_HELP[action.dest]
        return text if len(jobs) == len(all_jobs) else f"{text} Only for {_words(jobs)}."
    text = action.help or ""
    if "%" in text:
        text = text % {**vars(action), "prog": "clipbeam"}
    # The help names options as --dashed-names; a template user passes parameter names.
    text = re.sub(
        r"--([a-z][a-z0-9-]*)",
        lambda m: names.get(m.group(1).replace("-", "_"), m.group(0)),
        text,
    )
    text = text[:1].upper() + text[1:]
    if not text.endswith("."):
        text += "."
    if action.type is not None and _type_name(action) in _LIST_TYPES:
        pass  # comma-separated lists take several values in one parameter
    elif isinstance(action, argparse._AppendAction | argparse._ExtendAction):
        text += " One value as a template parameter."
    if len(defaults) == 1:
        ((value, _),) = defaults.items()
        text += f" Default: {value}."
    elif defaults:
        parts = [f"{value} for {_words(on)}" for value, on in defaults.items()]
        text += f" Default: {'; '.join(parts)}."
    if len(jobs) < len(all_jobs):
        text += f" Only for {_words(jobs)}."
    return text


def _label(name: str) -> str:
    words = [_LABEL_WORDS.get(w, w) for w in name.split("_")]
    return " ".join([words[0][:1].upper() + words[0][1:], *words[1:]])


def template_metadata() -> dict[str, Any]:
    """The Flex Template metadata (``templates/metadata.json``), derived from the clipbeam parser.

    Every option of every job becomes one parameter named after it with underscores (classify's
    ``--labels`` becomes ``class_labels``), plus the ``job`` parameter. An option several jobs
    share is one parameter; one that only some jobs have is shown only when ``job`` selects one
    of them.

    Returns:
        The metadata as a JSON-ready dict.

    Raises:
        ValueError: an option whose values no regex here describes, or one that two jobs define
            with different value types.
    """
    all_jobs = template_jobs()
    first: dict[str, argparse.Action] = {}
    jobs: dict[str, list[str]] = {}
    required: dict[str, bool] = {}
    defaults: dict[str, dict[str, list[str]]] = {}
    for job in all_jobs:
        for action in _job_actions(job):
            dest = action.dest
            seen = first.get(dest)
            if seen is not None and (_type_name(seen), seen.choices) != (
                _type_name(action),
                action.choices,
            ):
                raise ValueError(
                    f"--{dest} takes different values in {jobs[dest][0]} and {job}; one template "
                    "parameter cannot describe both"
                )
            first.setdefault(dest, action)
            jobs.setdefault(dest, []).append(job)
            required[dest] = required.get(dest, True) and bool(action.required)
            value = _as_value(action.default, action)
            if value is not None:
                defaults.setdefault(dest, {}).setdefault(value, []).append(job)

    names = {dest: _RENAMED.get(dest, dest) for dest in first}
    parameters: list[dict[str, Any]] = [
        {
            "name": JOB,
            "label": "Job",
            "helpText": "What to compute: embed (embeddings), score (image-text similarity), "
            "filter (keep or reject pairs), classify (zero-shot labels) or search (the rows best "
            "matching queries).",
            "isOptional": False,
            "regexes": ["^(?:" + "|".join(all_jobs) + ")$"],
            "paramType": "ENUM",
            "enumOptions": [{"value": kind, "label": kind} for kind in all_jobs],
        }
    ]
    for dest, action in first.items():
        on = jobs[dest]
        parameter: dict[str, Any] = {
            "name": names[dest],
            "label": _label(names[dest]),
            "helpText": _help_text(action, on, defaults.get(dest, {}), names),
            "isOptional": not required[dest],
            "regexes": [_regex(action)],
        }
        shared_default = defaults.get(dest, {})
        if action.choices is not None and len(shared_default) == 1:
            # A drop-down pre-fills its first entry: pre-fill clipbeam's default instead.
            ((value, default_jobs),) = shared_default.items()
            if default_jobs == on:
                parameter["paramType"] = "ENUM"
                parameter["enumOptions"] = [{"value": c, "label": c} for c in action.choices]
                parameter["defaultValue"] = value
        parameter.setdefault("paramType", _PARAM_TYPE_BY_DEST.get(dest, "TEXT"))
        if len(on) < len(all_jobs):
            parameter["parentName"] = JOB
            parameter["parentTriggerValues"] = on
        parameters.append(parameter)
    return {
        "name": "clipbeam",
        "description": _DESCRIPTION,
        "streaming": False,
        "parameters": parameters,
    }


if __name__ == "__main__":
    raise SystemExit(main())
