"""From a ``clipbeam`` command line to a job: :func:`parse_args`, the checks across options.

:func:`parse_args` parses with :func:`clipbeam.pipeline.options.build_parser`, leaves the
arguments clipbeam does not define to Beam (:mod:`clipbeam.pipeline.beam_options` checks them),
checks what no single option can (``--min-score`` with ``--top-fraction``, labels, templates),
and turns the rest into the job's :class:`~clipbeam.transforms.spec.JobSpec`. Problems raise
:class:`~clipbeam.pipeline.options.LaunchError`; nothing is printed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from clipbeam.pipeline.beam_options import check_beam_args, check_misspelled, resolve_beam_args
from clipbeam.pipeline.head_options import head_fields
from clipbeam.pipeline.options import DEFAULT_TEMPLATE, LaunchError, build_parser
from clipbeam.transforms.limits import DEFAULT_URL_SCHEMES
from clipbeam.transforms.spec import JobSpec

__all__ = ["ParsedArgs", "parse_args"]


@dataclass(frozen=True)
class ParsedArgs:
    """The parsed command line.

    Attributes:
        command: the subcommand (a job kind for the jobs).
        inputs: the ``--input`` patterns, in the order given.
        spec: the job's specification (``None`` for a non-job subcommand).
        beam_args: the arguments left for Beam's ``PipelineOptions``.
        labels_file: the ``--labels-file`` path, if labels were read from one.
    """

    command: str
    inputs: tuple[str, ...]
    spec: JobSpec | None
    beam_args: tuple[str, ...]
    labels_file: str | None = None


def parse_args(argv: Sequence[str], *, read_text: Callable[[str], str] | None = None) -> ParsedArgs:
    """Parses a clipbeam command line.

    Args:
        argv: the arguments after the program name.
        read_text: reads a ``--labels-file`` (defaults to the storage layer, so gs:// works).

    Returns:
        The subcommand, the job's :class:`JobSpec` and the arguments left for Beam.

    Raises:
        LaunchError: unknown or malformed arguments, or options that conflict.
    """
    parser = build_parser()
    try:
        namespace, extras = parser.parse_known_args(list(argv))
    except LaunchError:
        check_misspelled(argv, parser)  # a typo explains a missing option better than argparse
        raise
    command = namespace.command
    extras = resolve_beam_args(extras)
    check_beam_args(extras, parser, command)
    args = vars(namespace)

    labels = list(args.get("labels") or [])
    labels_file = args.get("labels_file")
    if command == "classify":
        if labels and labels_file:
            raise LaunchError("pass --labels or --labels-file, not both")
        if labels_file:
            labels = _read_labels(labels_file, read_text)
        if not labels:
            raise LaunchError(
                "classify needs candidate labels: pass --labels 'cat,dog' or --labels-file FILE"
            )
    _check_names("--labels-file" if labels_file else "--labels", labels)
    _check_names("--keep-columns", args["keep_columns"])
    _check_names("--reject-concepts", args.get("reject_concepts") or [])
    _check_names("--allowed-url-schemes", args["allowed_url_schemes"])

    if command == "filter":
        _check_filter(args)

    templates = args.get("template") or [DEFAULT_TEMPLATE]
    for template in templates:
        if template.count("{}") != 1:
            raise LaunchError(
                f"--template {template!r} must contain exactly one '{{}}' where the "
                f"{'label' if command == 'classify' else 'concept'} goes, "
                f"e.g. {DEFAULT_TEMPLATE!r}"
            )

    from clipbeam.model.hub import BUNDLED, close_bundled_name

    typo = close_bundled_name(args["model"])
    if typo is not None:
        raise LaunchError(
            f"--model {args['model']} is neither a bundled model nor a local folder: did you "
            f"mean {typo}? (bundled: {', '.join(BUNDLED)})"
        )
    options = _recorded_options(args)
    try:
        spec = JobSpec(
            kind=command,
            model=args["model"],
            output=args["output"].rstrip("/") or args["output"],
            image_column=args["image_column"],
            text_column=args["text_column"],
            id_column=args["id_column"],
            image_format=args["image_format"],
            keep_columns=tuple(args["keep_columns"]),
            batch_size=args["batch_size"],
            device=args["device"],
            dtype=args["dtype"],
            compile=args["compile"],
            embedding_dtype=args["embedding_dtype"],
            preprocess=args["preprocess"],
            resume=args["resume"],
            min_score=args.get("min_score"),
            top_fraction=args.get("top_fraction"),
            min_image_side=args.get("min_image_side"),
            max_aspect_ratio=args.get("max_aspect_ratio"),
            min_text_chars=args.get("min_text_chars"),
            reject_concepts=tuple(args.get("reject_concepts") or ()),
            concept_threshold=args.get("concept_threshold"),
            labels=tuple(labels),
            templates=tuple(templates),
            top_k=args.get("top_k") or 5,
            http_timeout=args["http_timeout"],
            max_error_fraction=args["max_error_fraction"],
            max_image_pixels=args["max_image_pixels"],
            max_image_bytes=args["max_image_bytes"],
            max_text_chars=args["max_text_chars"],
            allowed_url_schemes=tuple(args["allowed_url_schemes"] or DEFAULT_URL_SCHEMES),
            options=options,
            **head_fields(args),
        )
    except ValueError as exc:
        # JobSpec lists its problems one per line; the command line prints one line.
        lines = [line.strip().removeprefix("- ") for line in str(exc).splitlines()]
        raise LaunchError(f"{lines[0]} {'; '.join(lines[1:])}".strip()) from None
    return ParsedArgs(
        command=command,
        inputs=tuple(args["input"]),
        spec=spec,
        beam_args=tuple(extras),
        labels_file=labels_file,
    )


def _check_filter(args: dict[str, Any]) -> None:
    if args["min_score"] is not None and args["top_fraction"] is not None:
        raise LaunchError(
            "pass --min-score or --top-fraction, not both: --min-score keeps pairs above a fixed "
            "similarity, --top-fraction keeps the best fraction of the dataset"
        )
    if args["reject_concepts"] and args["concept_threshold"] is None:
        raise LaunchError(
            "--reject-concepts needs --concept-threshold T, the image-concept cosine similarity "
            "at or above which an image is rejected (it depends on the model: look at the "
            "scores of a few known images first)"
        )
    if args["concept_threshold"] is not None and not args["reject_concepts"]:
        raise LaunchError("--concept-threshold is set but --reject-concepts is not")
    if args["template"] and not args["reject_concepts"]:
        raise LaunchError("--template only applies to --reject-concepts in filter")
    rules = ("min_score", "top_fraction", "min_image_side", "max_aspect_ratio", "min_text_chars")
    listed = ("reject_concepts", "min_head", "max_head")
    if all(args[r] is None for r in rules) and not any(args[r] for r in listed):
        raise LaunchError(
            "filter needs at least one rule: --min-score, --top-fraction, --min-image-side, "
            "--max-aspect-ratio, --min-text-chars, --reject-concepts, --min-head or --max-head"
        )


def _check_names(option: str, names: Sequence[str]) -> None:
    if any(not name for name in names):
        raise LaunchError(f"{option} holds an empty name: {','.join(names)!r}")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise LaunchError(f"{option} repeats {', '.join(duplicates)}")


def _read_labels(path: str, read_text: Callable[[str], str] | None) -> list[str]:
    if read_text is None:
        from clipbeam.transforms import storage

        def read_text(p: str) -> str:
            return storage.read_bytes(p).decode("utf-8")

    try:
        text = read_text(path)
    except FileNotFoundError:
        raise LaunchError(f"--labels-file {path} does not exist") from None
    except UnicodeDecodeError as exc:
        raise LaunchError(f"--labels-file {path} is not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise LaunchError(f"cannot read --labels-file {path}: {exc}") from None
    labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise LaunchError(f"--labels-file {path} holds no labels (expected one per line)")
    return labels


def _recorded_options(args: dict[str, Any]) -> dict[str, Any]:
    """The clipbeam options as given, JSON-serializable, for output metadata and summary.json."""
    recorded = {}
    for key, value in sorted(args.items()):
        if isinstance(value, tuple):
            value = list(value)
        recorded[key] = value
    return recorded
