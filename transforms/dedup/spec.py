"""What a dedup job computes: one frozen, picklable description shared by launcher and workers."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["DEFAULT_EPS", "SHUFFLES", "STAGING_DIR", "DedupSpec", "DedupStats", "eps_column"]

SHUFFLES = ("auto", "runner", "files")
STAGING_DIR = "_staging"

# The first threshold is the one duplicates/ lists. 0.03 (cosine 0.97) and not NeMo Curator's
# 0.01: on planted copies of generated scenes with the bundled demo-clip (JPEG quality 40, half
# size, 5% crop, +10% brightness; tests/pipeline/test_dedup_planted.py), eps 0.01 misses about one
# copy in ten (the crops: recall 0.88-0.90 over four seeds), 0.03 finds 97.5-100% at a precision of
# 0.994-1.0, and 0.05 starts to take distinct scenes (precision 0.975-0.988).
DEFAULT_EPS = (0.03, 0.01, 0.05)


def eps_column(eps: float) -> str:
    """The keep column of one threshold: ``keep_eps_0.01``."""
    return f"keep_eps_{eps:g}"


@dataclass(frozen=True)
class DedupSpec:
    """Everything a dedup job needs.

    Attributes:
        output: output directory (local path or ``gs://...``).
        embedding_column: the column holding one embedding per row.
        dim: the embeddings' dimension (learned at launch).
        id_column: column identifying rows; ``None`` writes ``id`` = ``"<file>:<row>"``.
        image_column: column of image bytes (binary, or a ``{bytes, path}`` struct) hashed with
            sha256 for exact duplicates; ``None`` for no exact step.
        keep_columns: input columns copied to ``dedup/``.
        clusters: k-means clusters asked for (fewer when there are fewer distinct rows).
        fit_rows: most rows the k-means fit sees (a deterministic sample across all units).
        eps: thresholds; a row is a duplicate at ``eps`` when ``max_similarity >= 1 - eps``.
            The first is the one ``duplicates/`` lists.
        seed: seed of the sample and of k-means.
        niter: k-means iterations.
        max_cluster_rows: a cluster with more rows is split by a second-level k-means.
        block_rows: rows per tile of the pairwise step.
        resume: skip cluster groups an earlier run of the same job finished.
        against: input patterns of a reference set (an evaluation set's embeddings); every row
            gets its nearest reference row, and is removed within ``against_eps`` of it.
        against_eps: a row is removed when ``max_reference_similarity >= 1 - against_eps``.
        against_id_column: the reference set's id column (``None``: ``"<file>:<row>"``).
        against_embedding_column: the reference set's embedding column.
        against_image_column: the reference set's image column, embedded with ``model`` in the
            job (then ``against_embedding_column`` is not read); ``None``: embeddings.
        model: with raw images as input, the checkpoint that embeds ``image_column`` in the
            reading step (``embedding_column`` is then not read); ``None``: embeddings as input.
        device: the device that model runs on (``"auto"``, ``"cpu"``, ``"cuda"``).
        dtype: the dtype it computes in (as ``clipbeam embed --dtype``).
        batch_size: images per model call.
        shuffle: how rows reach their cluster group: ``"runner"``, the runner's GroupByKey
            (Dataflow Shuffle, Dask); ``"files"``, through files under ``staging_dir`` that
            are read back group by group (:mod:`~clipbeam.transforms.dedup.file_shuffle`), so
            that the runner holds file offsets, not rows (the DirectRunner holds every grouped
            row in memory); ``"auto"``, resolved by the launcher (files on the DirectRunner).
        options: the options as given (recorded in metadata and the summary).
    """

    output: str
    embedding_column: str = "image_embedding"
    dim: int = 0
    id_column: str | None = "id"
    image_column: str | None = None
    keep_columns: tuple[str, ...] = ()
    clusters: int = 1000
    fit_rows: int = 1_000_000
    eps: tuple[float, ...] = DEFAULT_EPS
    seed: int = 0
    niter: int = 20
    max_cluster_rows: int = 50_000
    block_rows: int = 1024
    resume: bool = False
    against: tuple[str, ...] = ()
    against_eps: float = 0.05
    against_id_column: str | None = "id"
    against_embedding_column: str = "image_embedding"
    against_image_column: str | None = None
    model: str | None = None
    device: str = "auto"
    dtype: str = "float32"
    batch_size: int = 32
    shuffle: str = "runner"
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "eps", tuple(float(e) for e in self.eps))
        object.__setattr__(self, "keep_columns", tuple(self.keep_columns))
        object.__setattr__(self, "against", tuple(self.against))
        problems = []
        if not self.eps:
            problems.append("eps needs at least one threshold")
        if any(not 0.0 <= e < 1.0 for e in self.eps):
            problems.append(f"every eps must be in [0, 1) (got {list(self.eps)})")
        if not 0.0 <= self.against_eps < 1.0:
            problems.append(f"against_eps must be in [0, 1) (got {self.against_eps})")
        if len(set(self.eps)) != len(self.eps):
            problems.append(f"eps thresholds must differ (got {list(self.eps)})")
        if self.shuffle not in SHUFFLES:
            problems.append(f"shuffle must be one of {', '.join(SHUFFLES)} (got {self.shuffle!r})")
        if self.model is not None and self.image_column is None:
            problems.append("a model embeds images: name their column (--image-column)")
        if self.against_image_column is not None and not self.against:
            problems.append(
                "--against-image-column names the reference set's image column: give the "
                "reference set with --against"
            )
        elif self.against_image_column is not None and self.model is None:
            problems.append(
                "--against-image-column: the reference images are embedded with --model, the "
                "model that embeds the --input images (--image-column); with an --input of "
                "embeddings, embed the reference set with clipbeam embed and pass its embeddings"
            )
        for name in (
            "clusters",
            "fit_rows",
            "niter",
            "max_cluster_rows",
            "block_rows",
            "batch_size",
        ):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1 (got {getattr(self, name)})")
        if self.max_cluster_rows < 2:
            problems.append(f"max_cluster_rows must be at least 2 (got {self.max_cluster_rows})")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def kind(self) -> str:
        return "dedup"

    @property
    def staging_dir(self) -> str:
        """Where ``shuffle="files"`` writes the rows it groups (deleted when the job ends)."""
        from clipbeam.transforms import storage

        return storage.join(self.output, STAGING_DIR)

    def to_json(self) -> str:
        record = asdict(self)
        record["options"] = dict(self.options)
        return json.dumps(record, sort_keys=True, default=str)


@dataclass(frozen=True)
class DedupStats:
    """Exact, additive counts of a dedup job (``largest_group`` adds as a maximum).

    Attributes:
        input_rows: rows read.
        error_rows: rows written to ``errors/`` (no usable embedding).
        renormalized_rows: rows whose embedding was not L2-normalized in the input.
        output_rows: rows written to ``dedup/``.
        exact_duplicates: rows removed as a byte-identical copy of another row's image.
        removed: per eps, rows removed (exact duplicates included).
        groups: cluster groups written (each part of a split cluster, each chunk of a tiled
            part).
        resumed_groups: of ``groups``, those an earlier run finished.
        largest_group: rows in the largest group written.
        groups_over_bound: ``(cluster, part)`` groups still larger than ``max_cluster_rows``
            after the split (a second-level k-means does not divide near copies of one image),
            computed in tiles across workers (:mod:`~clipbeam.transforms.dedup.tiles`).
        units: input work units read.
        against_removed: rows removed as near a reference row (``--against``).
    """

    input_rows: int = 0
    error_rows: int = 0
    renormalized_rows: int = 0
    output_rows: int = 0
    exact_duplicates: int = 0
    removed: tuple[int, ...] = ()
    groups: int = 0
    resumed_groups: int = 0
    largest_group: int = 0
    groups_over_bound: int = 0
    units: int = 0
    against_removed: int = 0

    def __add__(self, other: DedupStats) -> DedupStats:
        n = max(len(self.removed), len(other.removed))
        a = self.removed + (0,) * (n - len(self.removed))
        b = other.removed + (0,) * (n - len(other.removed))
        return DedupStats(
            input_rows=self.input_rows + other.input_rows,
            error_rows=self.error_rows + other.error_rows,
            renormalized_rows=self.renormalized_rows + other.renormalized_rows,
            output_rows=self.output_rows + other.output_rows,
            exact_duplicates=self.exact_duplicates + other.exact_duplicates,
            removed=tuple(x + y for x, y in zip(a, b, strict=True)),
            groups=self.groups + other.groups,
            resumed_groups=self.resumed_groups + other.resumed_groups,
            largest_group=max(self.largest_group, other.largest_group),
            groups_over_bound=self.groups_over_bound + other.groups_over_bound,
            units=self.units + other.units,
            against_removed=self.against_removed + other.against_removed,
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DedupStats:
        record = json.loads(text)
        record["removed"] = tuple(record["removed"])
        record.setdefault("groups_over_bound", 0)
        record.setdefault("against_removed", 0)
        return cls(**record)
