"""`clipbeam search` with image queries (Parquet or files), text-to-text search and kept columns
joined from another dataset, on the real DirectRunner over generated scenes."""

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from clipbeam.pipeline.cli import main
from clipbeam.pipeline.demo.scenes import write_scenes
from tests.pipeline.jobtools import run_job
from tests.pipeline.test_search import search


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """400 scenes embedded with demo-clip, images and captions (text_embedding too)."""
    root = tmp_path_factory.mktemp("scenes")
    data = write_scenes(root / "scenes.parquet", 400, seed=5, row_group_size=100)
    run_job(
        "embed",
        data,
        str(root / "emb"),
        "demo-clip",
        "--id-column",
        "id",
        "--text-column",
        "caption_en",
    )
    rows = ds.dataset(data).to_table(columns=["id", "image", "caption_en"]).to_pylist()
    return root, data, rows


def test_image_queries_find_their_planted_copies_at_rank_one(scenes, tmp_path):
    root, _, rows = scenes
    planted = rows[3:300:37]  # 9 rows spread over 3 of the 4 units
    queries = tmp_path / "queries"
    queries.mkdir()
    table = pa.table(
        {
            "id": [f"q-{r['id']}" for r in planted[:5]] + ["q-broken", "q-html"],
            "image": [r["image"] for r in planted[:5]]
            + [planted[0]["image"][:200], b"<html><body>secret words</body></html>"],
        }
    )
    pq.write_table(table, queries / "queries.parquet")
    for r in planted[5:]:
        (queries / f"{r['id']}.jpg").write_bytes(r["image"])
    (queries / "empty.png").write_bytes(b"")
    out, result, summary = search(
        tmp_path,
        [root / "emb" / "embeddings"],
        "--query-images",
        str(queries / "*"),
        "--top-k",
        "3",
        "--keep-from",
        str(root / "scenes.parquet"),
        "--keep-columns",
        "caption_en",
    )
    first = {r["query"]: r for r in result.to_pylist() if r["rank"] == 1}
    want = {f"q-{r['id']}": r["id"] for r in planted[:5]}
    want.update({f"{r['id']}.jpg": r["id"] for r in planted[5:]})
    assert {q: r["id"] for q, r in first.items()} == want
    assert min(r["similarity"] for r in first.values()) > 0.99
    by_id = {r["id"]: r for r in rows}
    assert all(r["caption_en"] == by_id[r["id"]]["caption_en"] for r in result.to_pylist())
    errors = pq.read_table(out / "errors" / "queries.parquet").to_pylist()
    assert sorted((e["id"], e["error_type"]) for e in errors) == [
        ("empty.png", "empty_image"),
        ("q-broken", "corrupt_image"),
        ("q-html", "not_an_image"),
    ]
    assert not any("secret" in e["error_message"] for e in errors)
    assert summary["query_kind"] == "image" and summary["queries"] == len(planted) == 9
    assert summary["query_errors"] == 3 and summary["error_rows"] == 0
    assert set(summary["results_per_query"]) == set(want)


def test_text_to_text_search_over_caption_embeddings(scenes, tmp_path):
    root, data, rows = scenes
    caption = rows[17]["caption_en"]
    _, result, _ = search(
        tmp_path,
        [root / "emb" / "embeddings"],
        "--queries",
        caption,
        "--against-column",
        "text_embedding",
        "--top-k",
        "5",
        "--keep-from",
        data,
        "--keep-columns",
        "caption_en,image",
    )
    got = result.to_pylist()
    same = sorted(r["id"] for r in rows if r["caption_en"] == caption)
    # Every row with the very caption ties at the top (ranked by id), then the others.
    assert [r["id"] for r in got[: len(same)]] == same[:5]
    assert got[0]["similarity"] > 0.999 and got[0]["caption_en"] == caption
    assert got[0]["image"] == next(r["image"] for r in rows if r["id"] == got[0]["id"])


def test_image_query_errors_at_launch(scenes, tmp_path, capsys):
    root, _, _ = scenes
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"\xff\xd8\xff garbage")
    pq.write_table(pa.table({"id": ["x"], "picture": [b"1"]}), bad / "q.parquet")
    base = ["search", "--input", str(root / "emb" / "embeddings"), "--model", "demo-clip"]
    cases = [
        (["--query-images", str(bad / "a.jpg")], "none of the 1 --query-images decodes"),
        (["--query-images", str(bad / "none*.jpg")], "matches no file"),
        (["--query-images", str(bad / "q.parquet")], "has no column 'image'"),
        (["--query-images", str(bad / "a.jpg"), "--queries", "a cat"], "pass one of"),
        (["--keep-columns", "caption_en", "--queries", "a cat"], "for --keep-columns"),
    ]
    for n, (extra, message) in enumerate(cases):
        assert main([*base, "--output", str(tmp_path / f"out{n}"), *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert "garbage" not in err
        assert not (tmp_path / f"out{n}" / "results").exists()
