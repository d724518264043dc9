"""README.md's "Python API" examples run as written, after ``clipbeam demo``, in a fresh process."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from tests.processes import run_python

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Python API: your own pipelines"


def _examples() -> list[str]:
    text = (ROOT / "README.md").read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory) -> Path:
    from clipbeam.pipeline.demo.command import run_demo

    folder = tmp_path_factory.mktemp("readme")
    run_demo(["--output", str(folder / "demo-output"), "--rows", "60"], quiet=True)
    return folder


def test_the_section_holds_the_three_examples():
    examples = _examples()
    assert len(examples) == 3
    assert "ProcessUnits" in examples[0] and "KeyedModelHandler" in examples[1]
    assert all(name in examples[2] for name in ("duckdb", "polars", "pyarrow"))


@pytest.mark.parametrize("index", range(3), ids=["process-units", "run-inference", "read"])
def test_example_runs(demo_folder, index):
    if index == 2 and not (demo_folder / "my-embeddings").exists():
        # the reading example uses the first example's output
        test_example_runs(demo_folder, 0)
    code = _examples()[index]
    done = run_python("-c", code, cwd=demo_folder)
    assert done.returncode == 0, done.stderr[-3000:]
    if index == 0:
        table = pads.dataset(demo_folder / "my-embeddings" / "embeddings").to_table()
        assert table.num_rows == 60 and "image_embedding" in table.column_names
        assert "60 rows embedded, 0 errors" in done.stdout
    if index == 1:
        printed = done.stdout.splitlines()
        assert sum(line.startswith("('scene-") for line in printed) == 60
        assert any(line.startswith("broken ") for line in printed)  # failed alone
    if index == 2:
        assert done.stdout.splitlines()[0] == "60 float"
