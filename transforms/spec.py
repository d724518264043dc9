"""What a curation job computes: one frozen, picklable description shared by launcher and workers.

A :class:`JobSpec` holds every option that changes the rows a job writes. The pipeline builds it
from the command line; people who compose their own pipelines build it directly. It checks its own
invariants on construction, so a bad combination fails at launch with a message, not on a worker.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from clipbeam.transforms.heads import head_problems
from clipbeam.transforms.limits import (
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_TEXT_CHARS,
    DEFAULT_URL_SCHEMES,
    Limits,
    limit_problems,
)
from clipbeam.transforms.redact import redact_obj

__all__ = [
    "DEVICES",
    "DTYPES",
    "EMBEDDING_DTYPES",
    "IMAGE_FORMATS",
    "KINDS",
    "MAX_BATCH_SIZE",
    "OUTPUT_DIRS",
    "PREPROCESS_MODES",
    "RESULT_COLUMNS",
    "JobSpec",
    "int8_problem",
]

# Rows per model call at most: past this a batch of even tiny images holds gigabytes of pixels,
# and a window (four batches) would hold whole row groups.
MAX_BATCH_SIZE = 65_536

KINDS = ("embed", "score", "filter", "classify")
IMAGE_FORMATS = ("auto", "bytes", "hf-struct", "path")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "float16", "bfloat16", "int8")
EMBEDDING_DTYPES = ("float32", "float16")
# model.image_settings.PREPROCESS_MODES, repeated so that parsing a command line does not import
# torch (a test keeps the two equal).
PREPROCESS_MODES = ("exact", "fast")


def int8_problem(device: str, compile: bool | None = None) -> str | None:
    """Why ``--dtype int8`` cannot run with these options (one line), or ``None`` if it can.

    int8 runs on CPU only (``--device auto`` then means CPU), without ``torch.compile``.
    """
    if device.startswith("cuda"):
        return (
            f"--dtype int8 runs on CPU only (got --device {device}); on a GPU use --dtype "
            "float16 or bfloat16, or pass --device cpu"
        )
    if compile:
        return "--dtype int8 runs without --compile (pass --no-compile or another --dtype)"
    return None


# Sub-folders of the output directory each kind writes rows to (errors/ is written by every kind).
OUTPUT_DIRS: dict[str, tuple[str, ...]] = {
    "embed": ("embeddings",),
    "score": ("scores",),
    "filter": ("kept", "rejected"),
    "classify": ("labels",),
}

# Columns each kind computes (besides the id column and --keep-columns). embed writes the
# embeddings of the towers it has, and clip_score when it has both.
RESULT_COLUMNS: dict[str, tuple[str, ...]] = {
    "embed": ("image_embedding", "text_embedding", "clip_score"),
    "score": ("clip_score",),
    "filter": ("clip_score", "image_width", "image_height", "concept_scores", "reject_reason"),
    "classify": ("labels", "probabilities"),
}


@dataclass(frozen=True)
class JobSpec:
    """Everything a job needs to turn input rows into output rows.

    Attributes:
        kind: ``"embed"``, ``"score"``, ``"filter"`` or ``"classify"``.
        model: checkpoint source (local folder, fsspec URL or hub id), as ``load_model`` takes it.
        output: output directory (local path or ``gs://...``).
        image_column: column holding images, or ``None`` for a text-only dataset (embed only).
        text_column: column holding captions, or ``None`` for an image-only dataset (embed and
            classify only).
        id_column: column whose values identify rows; ``None`` writes an ``id`` column holding
            ``"<file>:<row>"`` instead.
        image_format: how images are stored: ``"bytes"`` (binary column), ``"hf-struct"``
            (Hugging Face ``{bytes, path}`` struct), ``"path"`` (string paths or URLs read with
            fsspec) or ``"auto"`` (decided per column type).
        keep_columns: input columns copied unchanged to every output row.
        batch_size: rows per model call.
        device: ``"auto"`` (CUDA if present, else CPU), ``"cpu"`` or ``"cuda"`` (an error without
            a GPU; never a silent fallback).
        dtype: dtype the model computes in (``"int8"``: int8 linear layers, CPU only, never picked
            by ``"auto"``); ``"auto"``: float16 on GPU, bfloat16 on CPUs with
            native bfloat16 (AVX512-BF16, AMX, Arm BF16), else float32 (``model.runtime``). The
            command line defaults to ``"auto"``; this class to float32, which gives the same
            rows on every machine.
        compile: ``torch.compile`` the model's towers; ``None``: on GPU only (on CPU it gains
            0-12% for about 20 s of compilation per worker process).
        embedding_dtype: dtype embeddings are stored in.
        preprocess: ``"exact"`` (image inputs equal to transformers') or ``"fast"`` (JPEGs
            decoded at reduced scale and resized in steps: several times faster, image features
            within about 0.995 cosine of exact mode; see ``model.image_transforms``).
        resume: skip work units whose output is already complete.
        min_score: filter: reject rows whose ``clip_score`` is below this.
        top_fraction: filter: keep only the best-scoring fraction of the whole dataset.
        min_image_side: filter: reject images whose shorter side is below this many pixels.
        max_aspect_ratio: filter: reject images whose long/short side ratio exceeds this.
        min_text_chars: filter: reject captions shorter than this (after stripping whitespace).
        reject_concepts: filter: reject images whose similarity to any of these concepts reaches
            ``concept_threshold``.
        concept_threshold: filter: cosine similarity at which a concept rejects an image.
        labels: classify: the candidate labels.
        templates: prompt templates, each with one ``{}`` for the label (classify) or the concept
            (filter); a label's text embedding is the normalized mean over its templates.
        top_k: classify: how many labels to keep per row.
        http_timeout: seconds reading one image by URL may take in all.
        max_error_fraction: the share of rows in ``errors/`` above which ``clipbeam`` exits with
            status 1 once the job has finished (``None``: no limit); not part of the job's
            identity, a ``--resume`` may change it.
        max_image_pixels: largest ``width * height`` decoded (checked from the header).
        max_image_bytes: largest encoded image read, from a cell, a file or a URL.
        max_text_chars: longest caption accepted, in characters.
        allowed_url_schemes: schemes image paths may use; ``"file"`` allows local paths.
        heads: ``(name, source)`` of each learned head on the image embedding
            (``model.heads``); each writes a float32 column ``name``.
        min_heads: filter: ``(name, x)``: reject rows whose head ``name`` gives less than x.
        max_heads: filter: ``(name, x)``: reject rows whose head ``name`` gives more than x.
        options: the job's options as given (JSON-serializable), stored in output metadata with
            credentials in URLs redacted.
    """

    kind: str
    model: str
    output: str
    image_column: str | None = "image"
    text_column: str | None = "text"
    id_column: str | None = None
    image_format: str = "auto"
    keep_columns: tuple[str, ...] = ()
    batch_size: int = 32
    device: str = "auto"
    dtype: str = "float32"
    compile: bool | None = None
    embedding_dtype: str = "float32"
    preprocess: str = "exact"
    resume: bool = False
    # filter
    min_score: float | None = None
    top_fraction: float | None = None
    min_image_side: int | None = None
    max_aspect_ratio: float | None = None
    min_text_chars: int | None = None
    reject_concepts: tuple[str, ...] = ()
    concept_threshold: float | None = None
    # classify
    labels: tuple[str, ...] = ()
    templates: tuple[str, ...] = ("a photo of a {}.",)
    top_k: int = 5
    http_timeout: float = 30.0
    max_error_fraction: float | None = None
    # limits on what one row may cost (transforms.limits)
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS
    allowed_url_schemes: tuple[str, ...] = DEFAULT_URL_SCHEMES
    # learned heads on the image embedding (transforms.heads)
    heads: tuple[tuple[str, str], ...] = ()
    min_heads: tuple[tuple[str, float], ...] = ()
    max_heads: tuple[tuple[str, float], ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self) -> None:
        # Lists are accepted for convenience and stored as tuples, so specs stay hashable.
        for name in ("keep_columns", "reject_concepts", "labels", "templates"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("heads", "min_heads", "max_heads"):
            value = getattr(self, name)
            pairs = value.items() if isinstance(value, Mapping) else value
            object.__setattr__(self, name, tuple((str(k), v) for k, v in pairs))
        schemes = tuple(s.strip().lower() for s in self.allowed_url_schemes)
        object.__setattr__(self, "allowed_url_schemes", schemes)
        # Options end up in every output file's metadata and in summary.json.
        object.__setattr__(self, "options", redact_obj(dict(self.options)))
        problems = self._problems()
        if problems:
            raise ValueError("invalid job options:\n" + "\n".join(f"  - {p}" for p in problems))

    def _problems(self) -> list[str]:
        p: list[str] = []
        if self.max_error_fraction is not None and not 0 <= self.max_error_fraction <= 1:
            p.append(f"max_error_fraction must be in [0, 1] (got {self.max_error_fraction!r})")

        def choice(name: str, allowed: tuple[str, ...]) -> None:
            value = getattr(self, name)
            if value not in allowed:
                p.append(f"{name} must be one of {', '.join(allowed)} (got {value!r})")

        choice("kind", KINDS)
        choice("image_format", IMAGE_FORMATS)
        choice("device", DEVICES)
        choice("dtype", DTYPES)
        choice("embedding_dtype", EMBEDDING_DTYPES)
        choice("preprocess", PREPROCESS_MODES)
        if not self.model:
            p.append("model is empty: pass --model with a checkpoint folder, URL or hub id")
        if not self.output:
            p.append("output is empty: pass --output with a directory")
        if self.batch_size < 1:
            p.append(f"batch_size must be at least 1 (got {self.batch_size})")
        elif self.batch_size > MAX_BATCH_SIZE:
            p.append(f"batch_size must be at most {MAX_BATCH_SIZE} (got {self.batch_size})")
        p += limit_problems(
            max_image_pixels=self.max_image_pixels,
            max_image_bytes=self.max_image_bytes,
            max_text_chars=self.max_text_chars,
            fetch_timeout=self.http_timeout,
            allowed_url_schemes=self.allowed_url_schemes,
        )

        needs = {
            "embed": "an image column or a text column",
            "score": "both an image column and a text column",
            "filter": "both an image column and a text column",
            "classify": "an image column",
        }.get(self.kind)
        has_image, has_text = self.image_column is not None, self.text_column is not None
        ok = {
            "embed": has_image or has_text,
            "score": has_image and has_text,
            "filter": has_image and has_text,
            "classify": has_image,
        }.get(self.kind, True)
        if not ok:
            p.append(f"{self.kind} needs {needs}")

        written = {"source_file", "row_number", "error_type", "error_message"}
        written |= set(RESULT_COLUMNS.get(self.kind, ()))
        if self.id_column is None:
            written.add("id")
        elif self.id_column in written:
            p.append(f"id column {self.id_column!r} clashes with a column the job writes")
        elif self.id_column in self.keep_columns:
            p.append(f"keep_columns holds the id column {self.id_column!r}, which is always kept")
        p += head_problems(self, written)
        clash = sorted(set(self.keep_columns) & written)
        if clash:
            p.append(f"keep_columns {clash} clash with columns the job writes; rename them")
        if len(set(self.keep_columns)) != len(self.keep_columns):
            p.append(f"keep_columns holds duplicates: {list(self.keep_columns)}")

        filter_fields = {
            "min_score": self.min_score,
            "top_fraction": self.top_fraction,
            "min_image_side": self.min_image_side,
            "max_aspect_ratio": self.max_aspect_ratio,
            "min_text_chars": self.min_text_chars,
            "concept_threshold": self.concept_threshold,
        }
        if self.kind != "filter":
            given = [k for k, v in filter_fields.items() if v is not None]
            if self.reject_concepts:
                given.append("reject_concepts")
            if given:
                p.append(f"{', '.join(given)} only apply to filter, not {self.kind}")
        else:
            if self.min_score is not None and self.top_fraction is not None:
                p.append("pass either min_score or top_fraction, not both")
            if self.top_fraction is not None and not 0 < self.top_fraction <= 1:
                p.append(f"top_fraction must be in (0, 1] (got {self.top_fraction})")
            if self.min_score is not None and not -1 <= self.min_score <= 1:
                p.append(f"min_score is a cosine similarity in [-1, 1] (got {self.min_score})")
            if self.min_image_side is not None and self.min_image_side < 1:
                p.append(f"min_image_side must be at least 1 (got {self.min_image_side})")
            if self.max_aspect_ratio is not None and self.max_aspect_ratio < 1:
                p.append(f"max_aspect_ratio must be at least 1 (got {self.max_aspect_ratio})")
            if self.min_text_chars is not None and self.min_text_chars < 0:
                p.append(f"min_text_chars must be non-negative (got {self.min_text_chars})")
            if self.reject_concepts and self.concept_threshold is None:
                p.append("reject_concepts needs concept_threshold (a cosine similarity)")
            if self.concept_threshold is not None and not self.reject_concepts:
                p.append("concept_threshold is set but reject_concepts is empty")
            if any(not c.strip() for c in self.reject_concepts):
                p.append(f"reject_concepts holds an empty concept: {list(self.reject_concepts)}")
            if len(set(self.reject_concepts)) < len(self.reject_concepts):
                # Each names a field of concept_scores.
                p.append(f"reject_concepts names a concept twice: {list(self.reject_concepts)}")

        if self.kind == "classify":
            if not self.labels:
                p.append("classify needs labels (--labels or --labels-file)")
            if any(not label.strip() for label in self.labels):
                p.append(f"labels holds an empty label: {list(self.labels)}")
            if len(set(self.labels)) != len(self.labels):
                p.append("labels holds duplicates")
            if self.top_k < 1:
                p.append(f"top_k must be at least 1 (got {self.top_k})")
        elif self.labels:
            p.append(f"labels only apply to classify, not {self.kind}")

        if self.kind in ("classify", "filter"):
            if not self.templates:
                p.append("templates is empty: pass at least one, e.g. 'a photo of a {}.'")
            for t in self.templates:
                if t.count("{}") != 1:
                    p.append(f"template {t!r} must contain exactly one '{{}}'")
        return p

    @property
    def head_names(self) -> tuple[str, ...]:
        """The heads' output columns, in the order given."""
        return tuple(name for name, _ in self.heads)

    @property
    def output_dirs(self) -> tuple[str, ...]:
        """Sub-folders of :attr:`output` this job writes rows to (besides ``errors``)."""
        return OUTPUT_DIRS[self.kind]

    @property
    def limits(self) -> Limits:
        """What one row may cost, as :func:`clipbeam.transforms.images.load_image` and
        :func:`clipbeam.transforms.limits.check_caption` take it."""
        return Limits(
            max_image_pixels=self.max_image_pixels,
            max_image_bytes=self.max_image_bytes,
            max_text_chars=self.max_text_chars,
            fetch_timeout=self.http_timeout,
            allowed_url_schemes=self.allowed_url_schemes,
        )

    @property
    def effective_top_k(self) -> int:
        """``top_k`` bounded by the number of labels."""
        return min(self.top_k, len(self.labels))

    def prompts(self, names: tuple[str, ...]) -> list[str]:
        """All template fillings for ``names``: label-major, ``len(names) * len(templates)``."""
        return [t.replace("{}", n) for n in names for t in self.templates]

    def to_json(self) -> str:
        """The spec (without ``options``) as compact, sorted JSON: stored in output metadata.

        Credentials in URLs (a ``--model`` given as ``https://user:token@host/...``) are redacted.
        """
        data = asdict(self)
        data.pop("options")
        return json.dumps(redact_obj(data), sort_keys=True, separators=(",", ":"))
