"""``clipbeam report`` of a dedup output: borderline groups with thumbnails, removed share by eps,
read back against the job's own dedup/ rows and input images."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from PIL import Image

from clipbeam.pipeline.dedup import run
from clipbeam.pipeline.report import collect, render, thumbnail_uri, write_report
from clipbeam.pipeline.report.dedup import EPS_GRID
from tests.pipeline.test_dedup_planted import planted_scenes
from tests.pipeline.test_report import Chromium

EXAMPLES = 4


@pytest.fixture(scope="module")
def dedup_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("report-dedup")
    table, _ = planted_scenes(seed=5, distinct=40, planted=8, exact=3)
    (root / "in").mkdir()
    pq.write_table(table, root / "in" / "scenes.parquet", row_group_size=32)
    out = root / "out"
    model = ("--model", "demo-clip", "--image-column", "image", "--device", "cpu")
    semdedup = ("--dtype", "float32", "--clusters", "3", "--eps", "0.03,0.08")
    run(["--input", str(root / "in"), "--output", str(out), *model, *semdedup])
    rows = ds.dataset(out / "dedup").to_table().to_pylist()
    images = dict(
        zip(table.column("id").to_pylist(), table.column("image").to_pylist(), strict=True)
    )
    return out, rows, images


def test_groups_are_the_lowest_similarity_removals_with_their_images(dedup_run):
    out, rows, images = dedup_run
    data = collect(str(out), examples=EXAMPLES, thumbnail_side=48)
    view = data.dedup
    assert view is not None and view.rows == len(rows) == data.file_rows["dedup"]
    removed = sorted(
        (r["max_similarity"], r["id"], r["duplicate_of"])
        for r in rows
        if not r["keep_eps_0.03"] and r["exact_duplicate_of"] is None
    )
    assert len(removed) > EXAMPLES  # enough to choose from
    groups = view.groups
    assert 0 < len(groups) <= EXAMPLES
    # lowest similarity first, across groups and inside each; the first is the global lowest
    lows = [g.lowest for g in groups]
    assert lows == sorted(lows) and lows[0] == pytest.approx(removed[0][0])
    by_id = {r["id"]: r for r in rows}
    for g in groups:
        scores = [e.score for e in g.removed]
        assert scores == sorted(scores)
        for e in g.removed:
            assert by_id[e.id]["duplicate_of"] == g.kept.id
            assert e.score == pytest.approx(by_id[e.id]["max_similarity"])
    # every shown row carries its own input image
    for e in view.examples():
        want = thumbnail_uri(Image.open(io.BytesIO(images[e.id])), 48)
        assert e.thumbnail == want, e.id


def test_removed_share_by_eps_counts_the_stored_similarities(dedup_run):
    out, rows, _ = dedup_run
    data = collect(str(out))
    view = data.dedup
    exact = sum(r["exact_duplicate_of"] is not None for r in rows)
    assert view.exact == exact == data.summary["exact_duplicates"] > 0
    curve = dict(view.curve)
    assert set(curve) == {*EPS_GRID, 0.03, 0.08}
    for eps, removed in curve.items():
        similar = sum(
            r["max_similarity"] is not None and r["max_similarity"] >= 1 - eps for r in rows
        )
        assert removed == similar + exact, eps
    # the run's own eps: the same counts as its keep columns and summary.json
    for eps in ("0.03", "0.08"):
        assert curve[float(eps)] == sum(not r[f"keep_eps_{eps}"] for r in rows)
        assert curve[float(eps)] == data.summary["eps"][eps]["removed"]
    assert dict(view.run_eps) == {e: c["removed"] for e, c in data.summary["eps"].items()}


def test_page_shows_the_groups_and_the_table(dedup_run, tmp_path):
    out, rows, _ = dedup_run
    path = write_report(str(out), str(tmp_path / "report.html"), examples=EXAMPLES)
    with open(path, encoding="utf-8") as f:
        page = f.read()
    data = collect(str(out), examples=EXAMPLES)
    assert 'id="dedup-eps"' in page and 'id="dedup-groups"' in page
    assert 'id="scores"' not in page  # no clip_score section for dedup
    for eps, removed in data.dedup.curve:
        assert f'data-removed-eps="{eps:g}">{removed:,}<' in page
    assert page.count('class="cards group"') == len(data.dedup.groups)
    assert page.count("data:image/jpeg;base64,") == len(data.dedup.examples())
    assert f'data-count="output_rows">{len(rows):,}<' in page
    assert render(data) == page


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("headless Chromium is not installed: `apt-get install chromium`")
    browser = Chromium(binary, tmp_path_factory.mktemp("chromium") / "profile")
    yield browser
    browser.close()


def test_page_renders_offline_in_chromium(dedup_run, chromium, tmp_path):
    out, _, _ = dedup_run
    page = Path(write_report(str(out), str(tmp_path / "report.html"), examples=EXAMPLES))
    load = chromium.load(page)
    assert load.errors == []
    assert [u for u in load.requests if not u.startswith("data:")] == [page.resolve().as_uri()]
    summary = json.loads((out / "summary.json").read_text())
    shown = {k: f"{summary[k]:,}" for k in load.dom["counts"]}
    assert load.dom["counts"] == shown and "output_rows" in shown
    assert load.dom["broken"] == 0 and load.dom["scripts"] == 0
    assert load.dom["images"] == len(collect(str(out), examples=EXAMPLES).dedup.examples()) > 0
