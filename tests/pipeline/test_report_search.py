"""`clipbeam report` on a `clipbeam search` output: per query, its best and borderline results,
with thumbnails read back from the rows that hold the images."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds

from clipbeam.pipeline.report.collect import collect
from clipbeam.pipeline.report.inputs import thumbnail_uri
from clipbeam.pipeline.report.page import render
from clipbeam.transforms.images import decode_image
from tests.pipeline.test_report import chromium  # noqa: F401 (a fixture)
from tests.pipeline.test_search import search
from tests.pipeline.test_search_queries import scenes  # noqa: F401 (a fixture)

QUERIES = "a red circle,a blue square,a green triangle"


def test_search_report_shows_best_and_borderline_with_thumbnails_from_the_dataset(
    scenes,  # noqa: F811
    tmp_path,
):
    root, data, rows = scenes
    images = {r["id"]: r["image"] for r in rows}
    out, table, _ = search(
        tmp_path,
        [root / "emb" / "embeddings"],
        "--queries",
        QUERIES,
        "--top-k",
        "9",
        "--keep-from",
        data,
        "--keep-columns",
        "caption_en",
    )
    report = collect(str(out), examples=4)
    assert [q.query for q in report.queries] == QUERIES.split(",")
    results = table.to_pylist()
    for q in report.queries:
        mine = [r for r in results if r["query"] == q.query]
        assert q.count == 9
        assert [e.id for e in q.best] == [r["id"] for r in mine[:4]]
        assert [e.id for e in q.borderline] == [r["id"] for r in mine[::-1][:4]]
        for e in (*q.best, *q.borderline):
            assert e.thumbnail == thumbnail_uri(decode_image(images[e.id]), 160)
            assert e.caption == next(r["caption_en"] for r in rows if r["id"] == e.id)
    page = render(report)
    assert page.count('class="cards best"') == 3 and page.count('class="cards borderline"') == 3
    assert "input rows = rows searched + error rows" in page and "✗" not in page
    assert 'data-count="rows_searched">400<' in page
    assert "similarity" in page and "<h3>a blue square</h3>" in page
    assert report.notes == []


def test_search_report_with_images_kept_and_without_any_images(scenes, tmp_path):  # noqa: F811
    root, data, rows = scenes
    kept_out, _, _ = search(
        tmp_path,
        [root / "emb" / "embeddings"],
        "--queries",
        QUERIES,
        "--min-similarity",
        "0.2",
        "--max-results-per-query",
        "3",
        "--keep-from",
        data,
        "--keep-columns",
        "image",
        name="kept",
    )
    report = collect(str(kept_out), examples=2)
    summary = json.loads((kept_out / "summary.json").read_text())
    assert summary["capped_queries"]
    images = {r["id"]: r["image"] for r in rows}
    for q in report.queries:
        assert q.capped == (q.query in summary["capped_queries"])
        assert len(q.best) == 2 and len(q.borderline) == 1
        for e in (*q.best, *q.borderline):
            assert e.thumbnail == thumbnail_uri(decode_image(images[e.id]), 160)
    assert "capped at --max-results-per-query 3" in render(report)
    # Embeddings alone: the cards have no thumbnails, and the page still renders.
    plain_out, _, _ = search(
        tmp_path, [root / "emb" / "embeddings"], "--queries", QUERIES, name="plain"
    )
    embedded = ds.dataset(root / "emb" / "embeddings").schema
    assert not [f for f in embedded if f.type in (pa.binary(), pa.large_binary())]
    plain = collect(str(plain_out))
    assert all(e.thumbnail is None for q in plain.queries for e in (*q.best, *q.borderline))
    assert sum(len(q.best) for q in plain.queries) == 18 and plain.notes == []
    assert "<h3>a red circle</h3>" in render(plain)


def test_search_page_renders_offline_without_errors(scenes, chromium, tmp_path):  # noqa: F811
    from clipbeam.pipeline.report import write_report

    root, data, _ = scenes
    out, _, summary = search(
        tmp_path,
        [root / "emb" / "embeddings"],
        "--queries",
        QUERIES,
        "--top-k",
        "8",
        "--keep-from",
        data,
        "--keep-columns",
        "caption_en",
    )
    page = Path(write_report(str(out), str(tmp_path / "report.html")))
    load = chromium.load(page)
    assert load.errors == []
    assert [u for u in load.requests if not u.startswith("data:")] == [page.resolve().as_uri()]
    assert load.dom["counts"]["rows_searched"] == f"{summary['rows_searched']:,}"
    assert load.dom["broken"] == 0 and load.dom["scripts"] == 0
    assert load.dom["images"] == 3 * 8  # every result of every query, each shown once
