"""What Dataflow workers rely on: a model on gs:// is downloaded once per worker machine and
loaded once per SDK process, however many DoFn instances and harness threads use it."""

from __future__ import annotations

import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from clipbeam.model import hub
from clipbeam.transforms import storage
from clipbeam.transforms.encoder import Encoder, acquire_encoder


def test_model_on_gcs_is_fetched_once_and_loaded_once_per_process(
    clip_checkpoint, gcs_dir, tmp_path, monkeypatch
):
    cache = tmp_path / "cache"
    monkeypatch.setenv("CLIPBEAM_CACHE", str(cache))
    model = f"{gcs_dir}/model"
    for path in sorted(clip_checkpoint.iterdir()):
        storage.write_atomic(f"{model}/{path.name}", path.read_bytes())

    # Every download goes through a temporary file in the cache (then an atomic rename).
    downloads: list[Path] = []
    mkstemp = tempfile.mkstemp

    def counting_mkstemp(*args, **kwargs):
        fd, name = mkstemp(*args, **kwargs)
        if Path(name).is_relative_to(cache):
            downloads.append(Path(name))
        return fd, name

    monkeypatch.setattr(hub.tempfile, "mkstemp", counting_mkstemp)
    loads: list[str] = []
    load = Encoder.load.__func__

    def counting_load(cls, source, **kwargs):
        loads.append(source)
        return load(cls, source, **kwargs)

    monkeypatch.setattr(Encoder, "load", classmethod(counting_load))

    # Beam runs DoFn instances on several harness threads of one SDK process.
    def acquire(_: int) -> Encoder:
        return acquire_encoder(model, device="cpu", dtype="float32", batch_size=4)

    with ThreadPoolExecutor(max_workers=4) as pool:
        encoders = list(pool.map(acquire, range(8)))
    assert all(encoder is encoders[0] for encoder in encoders)
    assert loads == [model]
    fetched = sorted(p.name.split(".", 2)[1] for p in downloads)  # ".<name>.<random>"
    assert len(fetched) == len(set(fetched)), f"a file was downloaded twice: {fetched}"
    assert {"config", "model"} <= set(fetched), fetched
    cached = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in cache.rglob("*") if p.is_file()}

    # Another SDK process on the same machine: nothing in memory, the files on its disk.
    downloads.clear()
    other = Encoder.load(model, device="cpu", dtype="float32", batch_size=4)
    assert other is not encoders[0]
    assert downloads == []
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in cached} == cached
