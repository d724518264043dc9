"""Helpers of the job tests: run a job, read what it wrote, and compute reference values with
``model/`` called directly (never through transforms/ or pipeline/)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from tests.datasets import Dataset, Row

# The processes' own DirectRunner: one worker in memory unless a test asks for more.
DIRECT = ["--runner", "DirectRunner", "--direct_num_workers", "1"]


@dataclass
class JobRun:
    """A finished job: its output folder, summary.json and Beam counters."""

    output: str
    summary: dict[str, Any]
    counters: dict[str, int]

    def table(self, folder: str) -> pa.Table:
        return read_folder(join(self.output, folder))


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def run_job(
    command: str,
    inputs: str | Sequence[str],
    output: str,
    model: str | Path,
    *args: str,
    beam_args: Sequence[str] = DIRECT,
) -> JobRun:
    """Runs ``clipbeam <command>`` through :func:`clipbeam.pipeline.run` and collects what it
    reports."""
    from apache_beam.metrics.metric import MetricsFilter

    from clipbeam.pipeline import run

    patterns = [inputs] if isinstance(inputs, str) else list(inputs)
    if not any(arg.startswith("--dtype") for arg in args):
        # The outputs are compared with model/ called directly in float32 (to 1e-5); the
        # command-line default, auto, picks bfloat16 on CPUs that have it.
        args = ("--dtype", "float32", *args)
    argv = [command, "--output", output, "--model", str(model), *args, *beam_args]
    for pattern in patterns:
        argv += ["--input", pattern]
    result = run(argv)
    assert result.state == "DONE", result.state
    counters: Counter[str] = Counter()
    query = result.metrics().query(MetricsFilter().with_namespace("clipbeam"))
    for counter in query["counters"]:
        counters[counter.key.metric.name] += counter.committed
    return JobRun(output=output, summary=read_json(join(output, "summary.json")), counters=counters)


def read_json(path: str) -> dict[str, Any]:
    from clipbeam.transforms import storage

    return json.loads(storage.read_bytes(path))


def read_folder(folder: str) -> pa.Table:
    """Every Parquet file of an output folder as one table (pyarrow.dataset on local disk).

    Every folder a job writes holds at least one file, errors/ included (an empty one when no
    row failed): a missing or empty folder fails here.
    """
    from clipbeam.transforms import storage

    if "://" not in folder:
        table = pads.dataset(folder, format="parquet").to_table()
        assert table.schema.names, f"{folder} holds no file"  # an empty folder has no schema
        return table
    tables = []
    for path in storage.list_files(folder):
        with storage.open_input(path) as f:
            tables.append(pq.read_table(f))
    assert tables, f"{folder} holds no file"
    return pa.concat_tables(tables)


def ids(table: pa.Table, column: str = "id") -> list[Any]:
    return table.column(column).to_pylist()


def check_accounting(run: JobRun, dataset: Dataset, *, output_folders: Sequence[str]) -> None:
    """Every input row is in exactly one output (outputs or errors), with the id it came with,
    and summary.json and the counters agree with what is on disk."""
    id_column = dataset.id_column or "id"
    written = [i for f in output_folders for i in ids(run.table(f), id_column)]
    errors = ids(run.table("errors"), id_column)
    expected = [expected_id(dataset, r) for r in dataset.rows]
    assert sorted(written + errors, key=str) == sorted(expected, key=str)
    assert len(set(written + errors)) == len(expected)  # none twice
    summary = run.summary
    assert summary["input_rows"] == len(dataset)
    assert summary["error_rows"] == len(errors)
    assert summary["output_rows"] == len(written)
    assert summary["input_rows"] == summary["output_rows"] + summary["error_rows"]
    if "kept" in summary:
        assert (
            summary["input_rows"] == summary["kept"] + summary["rejected"] + summary["error_rows"]
        )
        assert summary["kept"] == run.table("kept").num_rows
        assert summary["rejected"] == run.table("rejected").num_rows
    for name in ("input_rows", "output_rows", "error_rows", "kept", "rejected"):
        if name in summary:
            assert run.counters.get(name, 0) == summary[name], name


def check_errors(run: JobRun, dataset: Dataset) -> None:
    """The planted faults are the error rows, each with its fault as error_type."""
    id_column = dataset.id_column or "id"
    table = run.table("errors")
    found = dict(zip(ids(table, id_column), ids(table, "error_type"), strict=True))
    planted = {expected_id(dataset, r): r.fault for r in dataset.bad_rows}
    assert found == planted
    if table.num_rows:
        by_id = {expected_id(dataset, r): r for r in dataset.rows}
        for row in table.to_pylist():
            source = by_id[row[id_column]]
            assert row["row_number"] == source.row
            assert row["source_file"].endswith(source.file.rsplit("/", 1)[-1])
            assert row["error_message"]


def expected_id(dataset: Dataset, row: Row) -> Any:
    """The id a row must carry in every output: its id, else ``<file name>:<row in file>``."""
    if dataset.id_column is not None:
        return row.id
    return f"{row.file.rsplit('/', 1)[-1]}:{row.row}"


class Reference:
    """A checkpoint loaded with ``model/`` and called directly, one input at a time."""

    def __init__(self, checkpoint: str | Path):
        self.checkpoint = str(checkpoint)

    @cached_property
    def model(self) -> Any:
        from clipbeam.model import load_model

        return load_model(self.checkpoint, device="cpu").eval()

    @cached_property
    def processor(self) -> Any:
        from clipbeam.model import load_processor

        return load_processor(self.checkpoint)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp())

    def image(self, row: Row) -> np.ndarray:
        import torch

        inputs = self.processor(images=[row.image], return_tensors="pt")
        with torch.inference_mode():
            features = self.model.get_image_features(pixel_values=inputs["pixel_values"])
        return _normalized(features)

    def text(self, text: str) -> np.ndarray:
        import torch

        tokenizer = self.processor.tokenizer
        context = min(
            int(tokenizer.model_max_length),
            int(self.model.config.text_config.max_position_embeddings),
        )
        inputs = tokenizer([text], truncation=True, max_length=context, return_tensors="pt")
        with torch.inference_mode():
            features = self.model.get_text_features(**dict(inputs))
        return _normalized(features)

    def prompts(self, names: Sequence[str], templates: Sequence[str]) -> np.ndarray:
        """CLIP's zero-shot classifier: per name, the normalized mean of its template prompts."""
        rows = []
        for name in names:
            mean = np.mean([self.text(t.replace("{}", name)) for t in templates], axis=0)
            rows.append(mean / np.linalg.norm(mean))
        return np.stack(rows)


def _normalized(features: Any) -> np.ndarray:
    import torch

    if not isinstance(features, torch.Tensor):
        features = features.pooler_output
    vector = features[0].double().numpy()
    return (vector / np.linalg.norm(vector)).astype(np.float32)
