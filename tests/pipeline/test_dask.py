"""Jobs on Beam's DaskRunner, on a real dask.distributed cluster of two worker processes: every
job writes exactly the rows the DirectRunner writes on the same input."""

from __future__ import annotations

import pyarrow as pa
import pytest

from tests.datasets import FAULTS, build_dataset
from tests.pipeline import test_heads
from tests.pipeline.jobtools import join, read_folder, read_json, run_job
from tests.pipeline.test_heads import head_args

distributed = pytest.importorskip("distributed")
heads = test_heads.heads  # the fixture: heads of the published layouts

ALL_FAULTS = dict.fromkeys(FAULTS, 1)
# Floats may differ in the last bits: torch sums in another order with the workers' one thread.
TOLERANCE = 1e-5
# summary.json entries that differ between the two runs: wall-clock times, the output folder.
VOLATILE = {"timings", "output"}


@pytest.fixture(scope="module")
def cluster_address():
    """A LocalCluster of two worker processes, one thread each, for the whole module."""
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()


def run_dask(command: str, data, output: str, model, address: str, *args: str) -> dict:
    """``clipbeam <command>`` on the DaskRunner; returns its summary.json. (The DaskRunner's
    result has no metrics, so this does not use run_job.)"""
    from clipbeam.pipeline import run

    argv = [command, "--output", output, "--model", str(model), "--dtype", "float32", *args]
    argv += ["--input", data.pattern, "--runner", "DaskRunner", "--dask_address", address]
    result = run(argv)
    assert result.state == "DONE", result.state
    return read_json(join(output, "summary.json"))


def sorted_rows(table: pa.Table, key: str) -> list[dict]:
    return sorted(table.to_pylist(), key=lambda row: str(row[key]))


def check_same_as_direct(
    command, data, tmp_path, model, address, folders, *args, key: str = "id"
) -> dict:
    direct = run_job(command, data.pattern, str(tmp_path / "direct"), model, *args)
    summary = run_dask(command, data, str(tmp_path / "dask"), model, address, *args)
    for folder in [*folders, "errors"]:
        expected = sorted_rows(direct.table(folder), key)
        got = sorted_rows(read_folder(join(str(tmp_path / "dask"), folder)), key)
        assert [r[key] for r in got] == [r[key] for r in expected], folder
        for row, reference in zip(got, expected, strict=True):
            assert same(row, reference), (folder, row[key])
    for run_summary in (summary, direct.summary):
        run_summary["options"].pop("output", None)
    strip = {k: v for k, v in direct.summary.items() if k not in VOLATILE}
    got = {k: v for k, v in summary.items() if k not in VOLATILE}
    differ = sorted(k for k in got.keys() | strip.keys() if not same(got.get(k), strip.get(k)))
    assert not differ, {k: (got.get(k), strip.get(k)) for k in differ}
    return summary


def same(got, expected) -> bool:
    """Equal values, floats (in lists and dicts too) to TOLERANCE."""
    if isinstance(expected, float) and isinstance(got, float):
        return abs(got - expected) <= TOLERANCE
    if isinstance(expected, dict) and isinstance(got, dict):
        return got.keys() == expected.keys() and all(same(got[k], expected[k]) for k in got)
    if isinstance(expected, list) and isinstance(got, list):
        return len(got) == len(expected) and all(map(same, got, expected))
    return type(got) is type(expected) and got == expected


def test_runner_name_resolves_to_beams_dask_runner():
    from tests.pipeline.cmdline import parse

    parsed = parse("embed", "--runner", "dask", "--dask_address", "tcp://127.0.0.1:8786")
    assert parsed.beam_args == (
        "--runner",
        "apache_beam.runners.dask.dask_runner.DaskRunner",
        "--dask_client_address",
        "tcp://127.0.0.1:8786",
        "--dask_partition_size=1",  # one work unit per Dask task
    )
    assert parse("embed", "--runner=DaskRunner").beam_args == (
        "--runner=apache_beam.runners.dask.dask_runner.DaskRunner",
        "--dask_partition_size=1",
    )
    two_pass = parse("filter", "--top-fraction", "0.5", "--runner=DaskRunner").beam_args
    assert two_pass[-1] == "--dask_partition_size=1"  # its side inputs are right over partitions
    given = parse("embed", "--runner=DaskRunner", "--dask_npartitions=4").beam_args
    assert given == (
        "--runner=apache_beam.runners.dask.dask_runner.DaskRunner",
        "--dask_npartitions=4",
    )


def _noted(value: int, folder: str) -> int:
    """Passes ``value`` on and leaves a file behind for each call (the side effect a stage has)."""
    import os
    import uuid

    with open(os.path.join(folder, f"{value}-{uuid.uuid4().hex}"), "w"):
        pass
    return value


def _with_total(value: int, total: int, folder: str) -> None:
    import os

    with open(os.path.join(folder, f"{value}-of-{total}"), "w"):
        pass


def test_a_side_input_is_computed_once_in_the_graph(cluster_address, tmp_path):
    """A side input is one more consumer of what it is computed from: the steps before it run
    once per element, whatever the number of partitions that read it. (Beam 2.77's DaskRunner
    computed a side input inside each consuming task, running every step before it again there:
    a stage that writes files ran twice at once, and once more per partition.)"""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from clipbeam.pipeline.beam_options import resolve_beam_args

    calls, results = tmp_path / "calls", tmp_path / "results"
    calls.mkdir()
    results.mkdir()
    beam_args = resolve_beam_args(["--runner", "DaskRunner", "--dask_address", cluster_address])
    with beam.Pipeline(options=PipelineOptions(list(beam_args))) as pipeline:
        staged = pipeline | beam.Create(list(range(12))) | "Stage" >> beam.Map(_noted, str(calls))
        total = staged | beam.CombineGlobally(sum)
        _ = staged | "Use" >> beam.Map(
            _with_total, total=beam.pvalue.AsSingleton(total), folder=str(results)
        )
    stage_calls = sorted(int(name.name.split("-")[0]) for name in calls.iterdir())
    assert stage_calls == list(range(12))
    assert sorted(p.name for p in results.iterdir()) == sorted(f"{v}-of-66" for v in range(12))


def test_score(clip_checkpoint, cluster_address, tmp_path):
    data = build_dataset(tmp_path / "in", plant=ALL_FAULTS, seed=12)
    summary = check_same_as_direct(
        "score", data, tmp_path, clip_checkpoint, cluster_address, ["scores"], "--id-column", "id"
    )
    assert summary["input_rows"] == len(data)


def test_embed(clip_checkpoint, cluster_address, tmp_path):
    data = build_dataset(tmp_path / "in", plant=ALL_FAULTS, seed=11)
    check_same_as_direct(
        "embed", data, tmp_path, clip_checkpoint, cluster_address, ["embeddings"],
        "--id-column", "id",
    )  # fmt: skip


def test_classify(clip_checkpoint, cluster_address, tmp_path):
    data = build_dataset(tmp_path / "in", plant={"corrupt_image": 1}, seed=14)
    check_same_as_direct(
        "classify", data, tmp_path, clip_checkpoint, cluster_address, ["labels"],
        "--id-column", "id", "--labels", "cat,rocket,coffee", "--top-k", "2",
    )  # fmt: skip


def test_filter_min_score(clip_checkpoint, cluster_address, tmp_path):
    data = build_dataset(tmp_path / "in", plant=ALL_FAULTS, seed=13)
    check_same_as_direct(
        "filter", data, tmp_path, clip_checkpoint, cluster_address, ["kept", "rejected"],
        "--id-column", "id", "--min-score", "0.0",
    )  # fmt: skip


def test_filter_top_fraction(clip_checkpoint, cluster_address, tmp_path):
    # Two passes, a quantile sketch of every score and the cut as a side input: failed on the
    # DaskRunner while pass 1 was a multi-output ParDo.
    data = build_dataset(
        tmp_path / "in", num_files=3, rows_per_file=20, row_group_size=7,
        plant={"corrupt_image": 1, "null_text": 1}, seed=15,
    )  # fmt: skip
    summary = check_same_as_direct(
        "filter", data, tmp_path, clip_checkpoint, cluster_address, ["kept", "rejected"],
        "--id-column", "id", "--top-fraction", "0.3",
    )  # fmt: skip
    assert summary["kept"] > 0 and summary["rejected"] > 0


def test_filter_on_heads(clip_checkpoint, heads, cluster_address, tmp_path):
    """Learned heads (LAION and Curator layouts, and clipbeam's own) as columns and as filter
    rules, on top of --top-fraction: the DaskRunner's rows and counts per rule are the
    DirectRunner's."""
    import numpy as np

    root, _ = heads
    data = build_dataset(
        tmp_path / "in", num_files=2, rows_per_file=8, row_group_size=3,
        plant={"corrupt_image": 1}, seed=17,
    )  # fmt: skip
    probe = run_job("score", data.pattern, str(tmp_path / "probe"), clip_checkpoint,
                    "--id-column", "id", *head_args(root))  # fmt: skip
    median = float(np.median(probe.table("scores").column("aesthetic").to_numpy()))
    summary = check_same_as_direct(
        "filter", data, tmp_path, clip_checkpoint, cluster_address, ["kept", "rejected"],
        "--id-column", "id", *head_args(root), "--min-head", f"aesthetic={median}",
        "--top-fraction", "0.7",
    )  # fmt: skip
    assert summary["rejected_by_rule"]["min_head:aesthetic"] >= 1


def test_a_killed_worker_loses_and_duplicates_nothing(clip_checkpoint, tmp_path):
    """Both worker processes are killed (SIGKILL) once the first unit is done: Dask reruns the
    lost tasks on the restarted workers, or the job fails and a --resume run finishes it; either
    way the output holds every row exactly once, as the DirectRunner writes it."""
    import os
    import signal
    import threading
    import time

    data = build_dataset(tmp_path / "in", num_files=4, rows_per_file=12, row_group_size=3, seed=16)
    args = ("--id-column", "id")
    direct = run_job("score", data.pattern, str(tmp_path / "direct"), clip_checkpoint, *args)
    out = tmp_path / "dask"
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    killed: list[int] = []
    finished: list[bool] = []
    try:
        with distributed.Client(cluster.scheduler_address) as client:
            pids = list(client.run(os.getpid).values())

        def kill_after_first_unit():
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                units = out / "_units"
                if units.is_dir() and any(units.iterdir()):
                    finished.append((out / "summary.json").exists())
                    for pid in pids:
                        os.kill(pid, signal.SIGKILL)
                    killed.extend(pids)
                    return
                time.sleep(0.05)

        killer = threading.Thread(target=kill_after_first_unit)
        killer.start()
        try:
            run_dask("score", data, str(out), clip_checkpoint, cluster.scheduler_address, *args)
        except Exception:  # noqa: BLE001 (a loud failure is allowed: the resume must finish it)
            run_dask(
                "score", data, str(out), clip_checkpoint, cluster.scheduler_address,
                *args, "--resume",
            )  # fmt: skip
        killer.join()
    finally:
        cluster.close()
    assert killed == pids and finished == [False]  # killed mid-job, before the summary
    expected = sorted_rows(direct.table("scores"), "id")
    got = sorted_rows(read_folder(str(out / "scores")), "id")
    assert [r["id"] for r in got] == [r["id"] for r in expected]
    assert all(same(a, b) for a, b in zip(got, expected, strict=True))


def test_the_model_loads_once_per_worker_process(clip_checkpoint, tmp_path):
    """Twelve units over two fresh worker processes: the units spread over both (Beam's Dask
    default packs up to 128 elements in one partition, one worker's task) and each process
    loaded the model once, however many tasks it ran."""
    from clipbeam.transforms.encoder import model_loads

    data = build_dataset(tmp_path / "in", num_files=4, rows_per_file=9, row_group_size=3, seed=21)
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    try:
        address = cluster.scheduler_address
        run_dask(
            "score", data, str(tmp_path / "out"), clip_checkpoint, address, "--id-column", "id"
        )
        with distributed.Client(cluster.scheduler_address) as client:
            loads = client.run(model_loads)
    finally:
        cluster.close()
    counts = [per_worker.get(str(clip_checkpoint), 0) for per_worker in loads.values()]
    assert counts == [1, 1], loads  # units spread over both workers, one load on each


def test_search(cluster_address, tmp_path):
    """Range search with kept columns joined by id: the tagged single output and the join give
    on Dask exactly the rows of the DirectRunner."""
    import numpy as np

    from clipbeam.pipeline.search import run
    from tests.pipeline.test_dedup import write

    rng = np.random.default_rng(7)
    for f in range(2):
        x = rng.normal(size=(90, 64)).astype(np.float32)
        x[:, :8] += 1.5
        ids = [f"f{f}-{i:03d}" for i in range(90)]
        write(
            tmp_path / f"in{f}.parquet", ids, x, images=[i.encode() for i in ids], rows_per_group=30
        )
    args = [
        "--input",
        str(tmp_path / "in*.parquet"),
        "--model",
        "demo-clip",
        "--queries",
        "a red circle,a blue square",
        "--min-similarity",
        "0.2",
        "--keep-columns",
        "image",
    ]
    tables = {}
    for name, runner in (
        ("direct", []),
        ("dask", ["--runner", "DaskRunner", "--dask_address", cluster_address]),
    ):
        out = str(tmp_path / name)
        run(["--output", out, *args, *runner])
        tables[name] = sorted_rows(read_folder(join(out, "results")), "id")
        tables[name + "-summary"] = read_json(join(out, "summary.json"))
    assert tables["dask"] == tables["direct"] and tables["direct"]
    for key in ("input_rows", "results_per_query", "matches_per_query"):
        assert tables["dask-summary"][key] == tables["direct-summary"][key]


def test_dedup(cluster_address, tmp_path):
    """SemDeDup with exact copies, several eps and --against, over 6 units: every dedup/ and
    duplicates/ row as on the DirectRunner (ParDos with finish_bundle outputs, CombineGlobally,
    GroupByKey by cluster and side inputs computed from the job's own rows)."""
    from clipbeam.pipeline.dedup import run
    from tests.pipeline.test_dedup import planted, write

    ids, x, images, _ = planted(n_distinct=150, d=16, seed=3)
    write(tmp_path / "in" / "a.parquet", ids[:80], x[:80], images[:80], rows_per_group=30)
    write(tmp_path / "in" / "b.parquet", ids[80:], x[80:], images[80:], rows_per_group=30)
    write(tmp_path / "ref.parquet", [f"ref{i}" for i in range(5)], x[40:45])
    args = ["--input", str(tmp_path / "in"), "--image-column", "image", "--clusters", "4"]
    args += ["--fit-rows", "120", "--eps", "0.05,0.2", "--seed", "2"]
    args += ["--against", str(tmp_path / "ref.parquet"), "--against-eps", "0.01"]
    got = {}
    for name, runner in (
        ("direct", []),
        ("dask", ["--runner", "DaskRunner", "--dask_address", cluster_address]),
    ):
        out = str(tmp_path / name)
        run(["--output", out, *args, *runner])
        got[name] = {
            folder: sorted_rows(read_folder(join(out, folder)), "id")
            for folder in ("dedup", "duplicates")
        }
        got[name + "-summary"] = read_json(join(out, "summary.json"))
    assert len(got["direct"]["dedup"]) == len(ids) and got["direct"]["duplicates"]
    for folder in ("dedup", "duplicates"):
        assert len(got["dask"][folder]) == len(got["direct"][folder]), folder
        for row, reference in zip(got["dask"][folder], got["direct"][folder], strict=True):
            assert same(row, reference), (folder, row["id"])
    for key in ("input_rows", "output_rows", "error_rows", "exact_duplicates", "against_removed"):
        assert got["dask-summary"][key] == got["direct-summary"][key], key
