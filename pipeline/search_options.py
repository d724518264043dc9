"""The command line of ``clipbeam search``: its parser, and the job's spec from the values.

:func:`parse_values` checks the arguments without reading any file (the Flex Template launcher
uses it); :func:`parse` also reads the queries (a ``--queries-file``, the ``--query-images``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from clipbeam.pipeline.beam_options import check_beam_args, resolve_beam_args
from clipbeam.pipeline.options import (
    LaunchError,
    _add,
    _column,
    _column_name,
    _HelpFormatter,
    _names,
    _number,
    _Parser,
    add_image_model_options,
)
from clipbeam.pipeline.search_queries import QueryImage, read_query_images, read_text_queries
from clipbeam.transforms.search import DEFAULT_MAX_RESULTS, SearchSpec

__all__ = ["build_parser", "make_spec", "parse", "parse_values"]

_NO_QUERY = (
    "search needs queries: {where} no query; pass --queries 'a cat,a dog', --queries-file FILE "
    "(one per line) or --query-images PATTERN"
)


def build_parser(prog: str = "clipbeam search") -> _Parser:
    """The ``clipbeam search`` argument parser (unknown options are Beam's)."""
    parser = _Parser(
        prog=prog,
        description="the rows that best match text or image queries -> OUTPUT/results/. "
        "Options are also accepted with underscores.",
        formatter_class=_HelpFormatter,
        allow_abbrev=False,
    )
    io = parser.add_argument_group("input and output")
    _add(
        io,
        "input",
        action="extend",
        nargs="+",
        required=True,
        metavar="PATTERN",
        help="Parquet with an id and an embedding column (clipbeam embed's embeddings/), or "
        "raw images with --image-column",
    )
    _add(io, "output", required=True, metavar="DIR", help="output folder, local or gs://")
    _add(
        io,
        "model",
        required=True,
        metavar="SOURCE",
        help="the checkpoint that made the embeddings; its text (or image) tower embeds the "
        "queries",
    )
    _add(io, "resume", action="store_true", help="finish an earlier run of this job in --output")
    columns = parser.add_argument_group("columns")
    _add(
        columns,
        "embedding-column",
        type=_column_name,
        default="image_embedding",
        metavar="NAME",
        help="the embeddings searched: fixed_size_list or list of float32/float16 per row",
    )
    columns.add_argument(
        "--against-column",
        "--against_column",
        dest="embedding_column",
        type=_column_name,
        metavar="NAME",
        help="the same as --embedding-column; --against-column text_embedding searches the "
        "caption embeddings (text to text)",
    )
    _add(
        columns,
        "id-column",
        type=_column,
        default="id",
        metavar="NAME",
        help="column identifying rows; 'none' writes '<file>:<row>' ids",
    )
    _add(
        columns,
        "keep-columns",
        type=_names,
        action="extend",
        default=[],
        metavar="A,B",
        help="columns joined to each result by id (captions, urls, image), from --keep-from",
    )
    _add(
        columns,
        "keep-from",
        action="extend",
        nargs="+",
        default=[],
        metavar="PATTERN",
        help="Parquet the --keep-columns are read from, by --id-column (default: --input), "
        "e.g. the dataset clipbeam embed read",
    )
    raw = parser.add_argument_group("raw images (embedded with --model in the same job)")
    _add(
        raw,
        "image-column",
        type=_column,
        default=None,
        metavar="NAME",
        help="search images instead of stored embeddings: embed this column (bytes, "
        "{bytes, path} struct, or paths/URLs) with --model's image tower",
    )
    add_image_model_options(raw)
    queries = parser.add_argument_group("queries")
    _add(
        queries,
        "queries",
        type=_names,
        action="extend",
        default=[],
        metavar="A,B",
        help="text queries, comma-separated",
    )
    _add(
        queries,
        "queries-file",
        metavar="FILE",
        help="a UTF-8 text file (local or gs://) with one query per line",
    )
    _add(
        queries,
        "query-images",
        action="extend",
        nargs="+",
        default=[],
        metavar="PATTERN",
        help="image queries: Parquet with an image column, or image files (named by file name)",
    )
    _add(
        queries,
        "query-image-column",
        type=_column_name,
        default="image",
        metavar="NAME",
        help="the image column of --query-images Parquet (bytes or {bytes, path})",
    )
    _add(
        queries,
        "query-id-column",
        type=_column,
        default="id",
        metavar="NAME",
        help="names the queries of --query-images Parquet; absent: '<file>:<row>'",
    )
    _add(
        queries,
        "template",
        action="append",
        default=None,
        metavar="TEMPLATE",
        help="prompt template with one {} for a text query; repeat to average several "
        "(default: '{}', the query as written)",
    )
    kept = parser.add_argument_group("rows kept per query")
    _add(
        kept,
        "top-k",
        type=_number(int, 1),
        default=None,
        metavar="K",
        help="the K best rows (default 10 without --min-similarity); equal similarities go to "
        "the smaller id",
    )
    _add(
        kept,
        "min-similarity",
        type=_number(float, -1.0, 1.0),
        default=None,
        metavar="S",
        help="every row at or above cosine similarity S (with --top-k: the K best of them)",
    )
    _add(
        kept,
        "max-results-per-query",
        type=_number(int, 1),
        default=DEFAULT_MAX_RESULTS,
        metavar="N",
        help="cap of --min-similarity without --top-k: the N best rows at or "
        "above S; summary.json names the queries that reached it",
    )
    return parser


def parse_values(argv: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """Command line -> ``(option values, beam arguments)``, checked without reading any file
    (the Flex Template launcher checks a search this way)."""
    parser = build_parser()
    args, beam_args = parser.parse_known_args(list(argv))
    # DaskRunner spelled out; a typo of an option is an error, not an ignored Beam argument.
    beam_args = resolve_beam_args(beam_args)
    check_beam_args(beam_args, parser, "search")
    values = vars(args)
    given = [n for n in ("queries", "queries_file", "query_images") if values[n]]
    if len(given) > 1:
        shown = " and ".join("--" + n.replace("_", "-") for n in given)
        raise LaunchError(f"pass one of --queries, --queries-file, --query-images (got {shown})")
    if not (any(values["queries"]) or values["queries_file"] or values["query_images"]):
        raise LaunchError(_NO_QUERY.format(where="the query list is empty:"))
    for name in ("queries", "keep_columns"):
        entries = values[name]
        if any(entries) and not all(entries):
            raise LaunchError(
                f"--{name.replace('_', '-')} has {entries.count('')} empty entries among "
                f"{len(entries)}: remove the extra commas"
            )
    return values, beam_args


def make_spec(values: dict[str, Any], queries: Sequence[str], kind: str = "text") -> SearchSpec:
    """The job's spec from :func:`parse_values`' values and the query labels."""
    # The id is in every result already; the result's own columns cannot be kept.
    keep = [c for c in dict.fromkeys(values["keep_columns"]) if c and c != values["id_column"]]
    clash = [c for c in keep if c in ("query", "rank", "similarity")]
    if clash:
        raise LaunchError(
            f"--keep-columns {', '.join(clash)}: results have a column of that name already"
        )
    top_k = values["top_k"]
    if top_k is None and values["min_similarity"] is None:
        top_k = 10
    try:
        return SearchSpec(
            output=values["output"],
            model=values["model"],
            queries=tuple(queries),
            templates=tuple(values["template"] or ["{}"]),
            top_k=top_k,
            min_similarity=values["min_similarity"],
            max_results_per_query=values["max_results_per_query"],
            query_kind=kind,
            embedding_column=values["embedding_column"],
            id_column=values["id_column"],
            keep_columns=tuple(keep),
            keep_from=tuple(values["keep_from"]),
            image_column=values["image_column"],
            device=values["device"],
            dtype=values["dtype"],
            batch_size=values["batch_size"],
            resume=values["resume"],
            options={k: v for k, v in values.items() if k != "input"},
        )
    except ValueError as exc:
        raise LaunchError(str(exc)) from None


def parse(argv: Sequence[str]) -> tuple[SearchSpec, list[str], list[str], list[QueryImage]]:
    """Command line -> ``(spec without dim, inputs, beam arguments, query images)``; with image
    queries, the spec's queries are every image's label (:func:`validate_search` drops those
    that do not decode)."""
    values, beam_args = parse_values(argv)
    queries = [q for q in values["queries"] if q]
    images: list[QueryImage] = []
    if values["queries_file"]:
        queries = read_text_queries(values["queries_file"])
    elif values["query_images"]:
        images = read_query_images(
            values["query_images"], values["query_image_column"], values["query_id_column"]
        )
        queries = [image.label for image in images]
    if not queries:
        where = (
            f"--queries-file {values['queries_file']} holds"
            if values["queries_file"]
            else ("the query list is empty:")
        )
        raise LaunchError(_NO_QUERY.format(where=where))
    spec = make_spec(values, queries, "image" if images else "text")
    return spec, list(values["input"]), beam_args, images
