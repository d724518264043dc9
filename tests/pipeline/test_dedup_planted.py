"""Planted duplicates in generated scenes, found by `clipbeam dedup --model demo-clip`.

Distinct scenes differ in what the demo model can tell apart (shape, colour, size, position of
each object: what its captions name; the background is not named, and the model sees none).
Some scenes get four planted copies: re-encoded at JPEG quality 40, resized to half, cropped by
5%, brightened by 10%; others a byte-identical copy, to be caught by the hash.
"""

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageEnhance

from clipbeam.pipeline.dedup import run
from clipbeam.pipeline.demo.scenes import render, sample_scene
from clipbeam.transforms.dedup.spec import DEFAULT_EPS, eps_column

DISTINCT, PLANTED, EXACT = 300, 40, 20
MEASURED_EPS = (0.01, 0.02, 0.03, 0.04, 0.05)


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _variants(image: Image.Image) -> dict[str, bytes]:
    """The four planted copies of one scene, as JPEG bytes."""
    w, h = image.size
    dx, dy = round(w * 0.025), round(h * 0.025)  # 5% of each side, half on either edge
    return {
        "jpeg40": _jpeg(image, 40),
        "half": _jpeg(image.resize((w // 2, h // 2), Image.Resampling.BICUBIC), 90),
        "crop5": _jpeg(image.crop((dx, dy, w - dx, h - dy)), 90),
        "bright10": _jpeg(ImageEnhance.Brightness(image).enhance(1.1), 90),
    }


def planted_scenes(
    seed: int = 11, distinct: int = DISTINCT, planted: int = PLANTED, exact: int = EXACT
) -> tuple[pa.Table, dict[str, str]]:
    """``distinct`` scenes of distinct descriptions, four planted copies of the first
    ``planted`` and a byte-identical copy of the next ``exact``; ``(table, id -> group)``."""
    rng = np.random.default_rng(seed)
    seen, scenes = set(), []
    while len(scenes) < distinct:
        scene = sample_scene(rng)
        described = tuple((o.shape, o.color, o.size, o.position) for o in scene.objects)
        if described not in seen:
            seen.add(described)
            scenes.append(scene)
    ids, images, group = [], [], {}
    for k, scene in enumerate(scenes):
        image = render(scene)
        name = f"scene{k:04d}"
        ids.append(name)
        images.append(_jpeg(image, 90))
        group[name] = name
        if k < planted:
            for kind, data in _variants(image).items():
                ids.append(f"{name}-{kind}")
                images.append(data)
                group[ids[-1]] = name
        elif k < planted + exact:
            ids.append(f"{name}-copy")
            images.append(images[-1])
            group[ids[-1]] = name
    order = np.random.default_rng(seed + 1).permutation(len(ids))
    table = pa.table(
        {
            "id": pa.array([ids[i] for i in order]),
            "image": pa.array([images[i] for i in order], type=pa.binary()),
        }
    )
    return table, group


def precision_recall(table: pa.Table, group: dict[str, str], eps: float) -> tuple[float, float]:
    """Semantic duplicates at ``eps``, byte-identical copies left out (the hash finds those):
    of the planted copies (every row of a scene's group but one), the share removed as a
    duplicate of a row of their own group (recall); of the rows removed, the share that are
    such (precision)."""
    rows = [r for r in table.to_pylist() if r["exact_duplicate_of"] is None]
    planted = sum(1 for r in rows if r["id"] != group[r["id"]])
    removed = [r for r in rows if not r[eps_column(eps)]]
    right = sum(1 for r in removed if group[r["id"]] == group.get(r["duplicate_of"]))
    return right / max(len(removed), 1), right / planted


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    table, group = planted_scenes()
    (root / "in").mkdir()
    pq.write_table(table, root / "in" / "scenes.parquet", row_group_size=128)
    out = root / "out"
    model = ("--model", "demo-clip", "--image-column", "image", "--dtype", "float32")
    # the default eps first: the one duplicates/ lists
    eps = ",".join(str(e) for e in dict.fromkeys((DEFAULT_EPS[0], *MEASURED_EPS)))
    semdedup = ("--clusters", "8", "--seed", "3", "--eps", eps)
    run(["--input", str(root / "in"), "--output", str(out), *model, "--device", "cpu", *semdedup])
    result = ds.dataset(out / "dedup").to_table()
    return result, group, json.loads((out / "summary.json").read_text())


def test_planted_copies_are_found_at_the_default_eps(planted_run):
    table, group, summary = planted_run
    assert summary["output_rows"] == table.num_rows == len(group)
    measured = {e: precision_recall(table, group, e) for e in MEASURED_EPS}
    print("\n".join(f"eps {e}: precision {p:.3f} recall {r:.3f}" for e, (p, r) in measured.items()))
    precision, recall = precision_recall(table, group, DEFAULT_EPS[0])
    assert precision >= 0.95 and recall >= 0.95, measured


def test_exact_copies_are_caught_by_the_hash(planted_run):
    table, group, summary = planted_run
    exact = {r["id"]: r["exact_duplicate_of"] for r in table.to_pylist() if r["exact_duplicate_of"]}
    # the copy kept is the smaller id: the original scene
    assert exact == {i: group[i] for i in group if i.endswith("-copy")}
    assert summary["exact_duplicates"] == EXACT
