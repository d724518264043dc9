"""The Flex Template entry point: template parameters -> clipbeam command line, and a full launch
that builds each job's Dataflow job without submitting it (DataflowRunner ``--dry_run``) against
the storage emulator, as Dataflow's template launcher would call it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from apache_beam.internal import pickler
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2

from clipbeam.pipeline.arguments import parse_args
from clipbeam.pipeline.options import LaunchError
from clipbeam.transforms import storage
from clipbeam.transforms.process import UnitDoFn
from templates import launcher
from tests.datasets import build_dataset

JOB_LABELS = '{"goog-dataflow-provided-template-type": "flex", "team": "curation"}'


def test_translate_maps_job_and_class_labels_and_keeps_job_labels_apart():
    call = launcher.translate(
        [
            "--runner=DataflowRunner",
            "--input=gs://bucket-a/in/*.parquet",
            f"--labels={JOB_LABELS}",
            "--job=classify",
            "--class_labels=cat,dog",
            "--labels=cost-center=42",
            "--top_k=1",
        ]
    )
    assert call.command == (
        "classify",
        "--runner=DataflowRunner",
        "--input=gs://bucket-a/in/*.parquet",
        "--top_k=1",
        "--labels=cat,dog",
    )
    assert call.job_labels == (JOB_LABELS, "cost-center=42")
    assert call.beam_label_args() == [f"--labels={JOB_LABELS}", "--labels=cost-center=42"]


def test_translate_turns_on_off_values_into_flags(monkeypatch):
    # --compile has a --no-compile form: false must say so, as its default (None) means "on GPU".
    on = launcher.translate(["--job=embed", "--compile=True", "--batch_size=8"])
    off = launcher.translate(["--job=embed", "--compile=false", "--batch_size=8"])
    assert on.command == ("embed", "--compile", "--batch_size=8")
    assert off.command == ("embed", "--no-compile", "--batch_size=8")
    assert parse_args([*on.command, *REMOTE, "--model=demo-clip"]).spec.compile is True
    assert parse_args([*off.command, *REMOTE, "--model=demo-clip"]).spec.compile is False
    with pytest.raises(LaunchError, match="--compile takes true or false, got 'maybe'"):
        launcher.translate(["--job=embed", "--compile=maybe"])
    # A flag without a --no- form (a store_true option) is left out for false.
    monkeypatch.setattr(launcher, "_flags", lambda job: {"--fast": None})
    assert launcher.translate(["--job=embed", "--fast=yes"]).command == ("embed", "--fast")
    assert launcher.translate(["--job=embed", "--fast=0"]).command == ("embed",)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--input=gs://b/x"],
            "needs the job parameter: one of embed, score, filter, classify, search, dedup",
        ),
        (["--job=rank"], "invalid choice: 'rank'"),
        (["--job=score", "--class_labels=cat"], "class_labels is a parameter of the classify job"),
    ],
)
def test_translate_errors(argv, message):
    with pytest.raises(LaunchError, match=message):
        launcher.translate(argv)


REMOTE = ["--input=gs://bucket-a/in/*.parquet", "--output=gs://bucket-a/out"]


@pytest.mark.parametrize(
    ("args", "name"),
    [
        (["--input=data/*.parquet", "--output=gs://bucket-a/out", "--model=demo-clip"], "input"),
        (["--input=gs://bucket-a/in", "--output=/tmp/out", "--model=demo-clip"], "output"),
        ([*REMOTE, "--model=/models/clip"], "model"),
        ([*REMOTE, "--model=openai/clip-vit-base-patch32"], "model"),
        ([*REMOTE, "--model=file:///models/clip"], "model"),
        ([*REMOTE, "--model=demo-clip", "--labels_file=labels.txt"], "labels_file"),
    ],
)
def test_check_remote_refuses_paths_only_the_launcher_has(args, name):
    job = ["classify"] if any("labels_file" in a for a in args) else ["score"]
    parsed = parse_args([*job, *args], read_text=lambda path: "cat\ndog\n")
    with pytest.raises(LaunchError, match=rf"^{name} '.*' is a local path.*pass a gs:// URL"):
        launcher.check_remote(parsed)


def test_check_remote_accepts_urls_and_bundled_models():
    for model in ("gs://bucket-a/models/clip", "demo-chinese-clip"):
        parsed = parse_args(["score", *REMOTE, f"--model={model}"])
        launcher.check_remote(parsed)


@pytest.mark.parametrize(
    ("args", "name"),
    [
        (["--input=data/*.parquet", "--output=gs://bucket-a/out"], "input"),
        (["--input=gs://bucket-a/in", "--output=out"], "output"),
        ([*REMOTE, "--against=eval/*.parquet"], "against"),
        ([*REMOTE, "--model=/models/clip", "--image_column=image"], "model"),
    ],
)
def test_dedup_calls_translate_and_refuse_paths_only_the_launcher_has(args, name):
    call = launcher.translate(["--job=dedup", *args, "--eps=0.03,0.05", "--resume=false"])
    assert call.command[0] == "dedup" and "--eps=0.03,0.05" in call.command
    with pytest.raises(LaunchError, match=rf"^{name} '.*' is a local path"):
        launcher.check_call(call)
    ok = launcher.translate(["--job=dedup", *REMOTE, "--against=gs://b/eval", "--clusters=8"])
    _, (spec, inputs) = launcher.check_call(ok)
    assert (spec.clusters, spec.against, inputs) == (8, ("gs://b/eval",), [REMOTE[0][8:]])


# -- full launches, built for Dataflow without submitting -------------------------------------


def _do_fns(proto: beam_runner_api_pb2.Pipeline) -> list[object]:
    """The DoFns of a pipeline proto, unpickled as a worker unpickles them."""
    fns = []
    for transform in proto.components.transforms.values():
        if transform.spec.urn != common_urns.primitives.PAR_DO.urn:
            continue
        payload = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload)
        if payload.do_fn.payload:  # some of Beam's own DoFns are named by URN only
            fns.append(pickler.loads(payload.do_fn.payload)[0])
    return fns


JOBS = {
    "embed": ([], "Process"),
    "score": (["--id_column=id", "--keep_columns=text"], "Process"),
    "filter": (["--min_score=0.1", "--min_image_side=8", "--resume=true"], "Process"),
    "filter-top-fraction": (["--top_fraction=0.5"], "ScoreAndStage"),
    "classify": (
        ["--class_labels=cat,rocket", "--template=a photo of a {}.", "--top_k=1"],
        "Process",
    ),
}


@pytest.fixture(scope="module")
def gcs_inputs(gcs_emulator, clip_checkpoint):
    """A dataset and a model on the emulated bucket, shared by the launches."""
    root = gcs_emulator.url("template-launches")
    data = build_dataset(f"{root}/in", num_files=2, rows_per_file=5, seed=3)
    for path in sorted(clip_checkpoint.iterdir()):
        storage.write_atomic(f"{root}/model/{path.name}", path.read_bytes())
    return root, data.pattern


def _template_argv(
    root: str, name: str, job: str, pattern: str, output: str, *parameters: str
) -> list[str]:
    """What Dataflow's template launcher passes: its own pipeline options (a dry run staging to
    ``root``), then the job's parameters, the model being ``root``/model."""
    return [
        "--runner=DataflowRunner",
        "--project=clipbeam-test",
        "--region=us-central1",
        f"--job_name=clipbeam-template-{name}",
        f"--temp_location={root}/tmp",
        f"--staging_location={root}/staging",
        f"--template_location={root}/templates/{name}.json",
        "--sdk_container_image=us-docker.pkg.dev/clipbeam-test/images/clipbeam-gpu:1",
        f"--labels={JOB_LABELS}",
        "--dry_run=true",
        f"--job={job}",
        f"--input={pattern}",
        f"--output={output}",
        f"--model={root}/model",
        *parameters,
    ]


@pytest.mark.parametrize("case", list(JOBS))
def test_launch_builds_the_dataflow_job_without_running_it(case, gcs_inputs, gcs_dir, monkeypatch):
    pytest.importorskip("google.cloud.dataflow", reason="the Dataflow runner (apache-beam[gcp])")
    root, pattern = gcs_inputs
    job = case.split("-")[0]
    args, main_step = JOBS[case]
    output = f"{gcs_dir}/out"
    argv = _template_argv(root, "test", job, pattern, output, *args)
    result = launcher.launch(argv)

    assert result.state == "DONE"
    dataflow_job = result.job
    assert dict(dataflow_job.proto.labels) == json.loads(JOB_LABELS)
    names = {t.unique_name for t in dataflow_job.proto_pipeline.components.transforms.values()}
    assert {"PlanUnits", "SpreadUnits", main_step, "Summary"} <= names
    (environment,) = dataflow_job.proto_pipeline.components.environments.values()
    assert b"clipbeam-gpu:1" in environment.payload
    # Workers get the job with the gs:// URLs, never a path on the launcher (its model cache).
    unit_fns = [fn for fn in _do_fns(dataflow_job.proto_pipeline) if isinstance(fn, UnitDoFn)]
    assert len(unit_fns) == (2 if main_step == "ScoreAndStage" else 1)
    for fn in unit_fns:
        assert (fn.spec.model, fn.spec.output) == (f"{root}/model", output)
    # The launch recorded the job in the output folder, with the parameters' values.
    record = json.loads(storage.read_bytes(f"{output}/_job.json"))
    assert record["kind"] == job and record["model"] == f"{root}/model"
    # On Dataflow, image paths are URLs unless allowed_url_schemes says otherwise.
    assert record["allowed_url_schemes"] == ["gs", "http", "https"]
    if job == "classify":
        assert record["labels"] == ["cat", "rocket"]
    # Nothing ran: no unit was processed.
    assert not storage.exists(f"{output}/summary.json")


def test_launch_builds_the_dedup_job_without_running_it(gcs_inputs, gcs_dir):
    """Raw images embedded by the model on the bucket, one eps list: the whole dedup job is
    built for Dataflow, its reader DoFn holding the gs:// URLs and no model."""
    pytest.importorskip("google.cloud.dataflow", reason="the Dataflow runner (apache-beam[gcp])")
    from clipbeam.transforms.dedup.read import ReadUnit

    root, pattern = gcs_inputs
    output = f"{gcs_dir}/dedup"
    argv = _template_argv(root, "dedup", "dedup", pattern, output)
    argv += ["--image_column=image", "--id_column=id", "--clusters=2", "--eps=0.03,0.1"]
    result = launcher.launch(argv)

    assert result.state == "DONE"
    dataflow_job = result.job
    assert dict(dataflow_job.proto.labels) == json.loads(JOB_LABELS)
    names = {t.unique_name for t in dataflow_job.proto_pipeline.components.transforms.values()}
    assert {"PlanUnits", "Read/ReadUnit", "Fit", "SemDeDup", "Summary"} <= names
    (reader,) = [f for f in _do_fns(dataflow_job.proto_pipeline) if isinstance(f, ReadUnit)]
    assert (reader.spec.model, reader.spec.output) == (f"{root}/model", output)
    assert reader._encoder is None and reader.spec.eps == (0.03, 0.1)
    record = json.loads(storage.read_bytes(f"{output}/_job.json"))
    assert record["model"] == f"{root}/model" and record["clusters"] == 2
    assert not storage.exists(f"{output}/summary.json")


# -- every parameter at once ---------------------------------------------------------------

# One valid, non-default value for every template parameter but job, input, output and model,
# and the JobSpec field (and value) it must become on the workers.
FULL = {
    "resume": ("true", "resume", True),
    "image_column": ("jpg", "image_column", "jpg"),
    "text_column": ("caption", "text_column", "caption"),
    "id_column": ("key", "id_column", "key"),
    "image_format": ("bytes", "image_format", "bytes"),
    "keep_columns": ("source,rank", "keep_columns", ("source", "rank")),
    "batch_size": ("7", "batch_size", 7),
    "device": ("cuda", "device", "cuda"),
    "dtype": ("float16", "dtype", "float16"),
    "compile": ("false", "compile", False),
    "embedding_dtype": ("float16", "embedding_dtype", "float16"),
    "preprocess": ("fast", "preprocess", "fast"),
    "max_image_pixels": ("1000000", "max_image_pixels", 1_000_000),
    "max_image_bytes": ("8MiB", "max_image_bytes", 8 * 1024 * 1024),
    "max_text_chars": ("500", "max_text_chars", 500),
    "http_timeout": ("12.5", "http_timeout", 12.5),
    "max_error_fraction": ("0.5", "max_error_fraction", 0.5),
    "allowed_url_schemes": ("gs,https", "allowed_url_schemes", ("gs", "https")),
    "min_score": ("0.15", "min_score", 0.15),
    "top_fraction": ("0.4", "top_fraction", 0.4),
    "min_image_side": ("8", "min_image_side", 8),
    "max_aspect_ratio": ("3.5", "max_aspect_ratio", 3.5),
    "min_text_chars": ("2", "min_text_chars", 2),
    "reject_concepts": ("watermark,text", "reject_concepts", ("watermark", "text")),
    "concept_threshold": ("0.3", "concept_threshold", 0.3),
    "template": ("a picture of a {}.", "templates", ("a picture of a {}.",)),
    "class_labels": ("cat,rocket", "labels", ("cat", "rocket")),
    "labels_file": ("{root}/labels.txt", "labels", ("cat", "dog", "sea otter")),
    "top_k": ("1", "top_k", 1),
    "head": ("own={root}/heads/own", "heads", (("own", "{root}/heads/own"),)),
    "min_head": ("own=0.25", "min_heads", (("own", 0.25),)),
    "max_head": ("own=0.75", "max_heads", (("own", 0.75),)),
}


def _rooted(value, root: str):
    """``value`` with ``{root}`` filled in, tuples nested as they are."""
    if isinstance(value, tuple):
        return tuple(_rooted(v, root) for v in value)
    return value.replace("{root}", root) if isinstance(value, str) else value


def _listed(value):
    """``value`` as JSON reads it back: tuples as lists."""
    return [_listed(v) for v in value] if isinstance(value, tuple) else value


# Parameters that exclude each other are set in different cases of the same job.
FULL_CASES = {
    "embed": [],
    "score": [],
    "filter": ["top_fraction"],
    "filter-top-fraction": ["min_score"],
    "classify": ["labels_file"],
    "classify-labels-file": ["class_labels"],
}
METADATA = json.loads(
    (Path(launcher.__file__).parent / "metadata.json").read_text(encoding="utf-8")
)


def _parameters_of(job: str) -> list[str]:
    """The template parameters that apply to ``job``, as templates/metadata.json lists them."""
    return [
        p["name"]
        for p in METADATA["parameters"]
        if p["name"] not in ("job", "input", "output", "model")
        and job in p.get("parentTriggerValues", [job])
    ]


def test_full_cases_set_every_parameter_of_every_job():
    for job in ("embed", "score", "filter", "classify"):
        cases = [c for c in FULL_CASES if c.split("-")[0] == job]
        covered = {p for c in cases for p in _parameters_of(job) if p not in FULL_CASES[c]}
        assert covered == set(_parameters_of(job)), f"{job}: no full case sets these"
        missing = set(_parameters_of(job)) - set(FULL)
        assert not missing, f"add a value for {sorted(missing)} to FULL"


@pytest.fixture(scope="module")
def gcs_full_inputs(gcs_emulator, gcs_inputs, tmp_path_factory):
    """A dataset whose columns all have non-default names, and a labels file, on the bucket."""
    root, _ = gcs_inputs
    tmp = tmp_path_factory.mktemp("head")
    data = build_dataset(
        f"{root}/full-in",
        num_files=2,
        rows_per_file=5,
        image_column="jpg",
        text_column="caption",
        id_column="key",
        seed=5,
    )
    storage.write_atomic(f"{root}/labels.txt", b"cat\ndog\nsea otter\n")
    # A head for the tiny test model's 16-dim embeddings.
    from clipbeam.model.heads import Head, HeadConfig, LayerConfig, save_head

    local = save_head(Head(HeadConfig(layers=(LayerConfig(16, 1),), embedding_dim=16)), tmp)
    for path in sorted(local.iterdir()):
        storage.write_atomic(f"{root}/heads/own/{path.name}", path.read_bytes())
    return root, data.pattern


@pytest.mark.parametrize("case", list(FULL_CASES))
def test_launch_takes_every_parameter_to_the_workers(case, gcs_full_inputs, gcs_dir):
    pytest.importorskip("google.cloud.dataflow", reason="the Dataflow runner (apache-beam[gcp])")
    root, pattern = gcs_full_inputs
    job = case.split("-")[0]
    parameters = [p for p in _parameters_of(job) if p not in FULL_CASES[case]]
    values = {p: FULL[p][0].replace("{root}", root) for p in parameters}
    output = f"{gcs_dir}/out"
    argv = _template_argv(
        root, "full", job, pattern, output, *(f"--{p}={value}" for p, value in values.items())
    )
    # Every value passes the parameter's regex, as Dataflow checks them before the launcher.
    regexes = {p["name"]: p["regexes"] for p in METADATA["parameters"]}
    for p, value in values.items():
        assert all(re.fullmatch(r, value) for r in regexes[p]), (p, value)

    result = launcher.launch(argv)

    assert result.state == "DONE"
    proto = result.job.proto_pipeline
    names = {t.unique_name for t in proto.components.transforms.values()}
    main_step = "ScoreAndStage" if "top_fraction" in parameters else "Process"
    assert {"PlanUnits", "SpreadUnits", main_step, "Summary"} <= names
    # The workers' job: what the pipeline proto carries, unpickled as a worker unpickles it.
    unit_fns = [fn for fn in _do_fns(proto) if isinstance(fn, UnitDoFn)]
    assert len(unit_fns) == (2 if main_step == "ScoreAndStage" else 1)
    for fn in unit_fns:
        spec = fn.spec
        assert (spec.kind, spec.model, spec.output) == (job, f"{root}/model", output)
        reached = {p: getattr(spec, FULL[p][1]) for p in parameters}
        assert reached == {p: _rooted(FULL[p][2], root) for p in parameters}
    # The job record in the output folder holds the same values.
    record = json.loads(storage.read_bytes(f"{output}/_job.json"))
    assert record["inputs"] == [pattern]
    for p in parameters:
        field, value = FULL[p][1:]
        assert record[field] == _listed(_rooted(value, root)), p
    assert not storage.exists(f"{output}/summary.json")


def test_main_prints_a_launch_error_as_one_line(capsys):
    code = launcher.main(["--job=score", *REMOTE, "--model=/models/clip"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("clipbeam template: error: model '/models/clip' is a local path")
    assert "\n" not in err


# -- search --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "name"),
    [
        (["--input=data/*.parquet", "--queries=a cat"], "input"),
        (["--queries_file=queries.txt"], "queries_file"),
        (["--query_images=/tmp/queries/*.jpg"], "query_images"),
        (["--queries=a cat", "--keep_columns=caption", "--keep_from=/data/*.parquet"], "keep_from"),
    ],
)
def test_check_search_refuses_paths_only_the_launcher_has(args, name):
    base = ["--job=search", *REMOTE, "--model=demo-clip"]
    call = launcher.translate([*base, *args])
    assert call.command[0] == "search"
    with pytest.raises(LaunchError, match=rf"^{name} '.*' is a local path"):
        launcher.check_search(call.command)


def test_launch_builds_a_search_job_without_running_it(gcs_inputs, gcs_dir, tmp_path):
    pytest.importorskip("google.cloud.dataflow", reason="the Dataflow runner (apache-beam[gcp])")
    import numpy as np

    from clipbeam.transforms.encoder import Encoder
    from clipbeam.transforms.search_units import SearchUnit
    from tests.pipeline.test_dedup import write

    root, _ = gcs_inputs
    dim = Encoder.load(f"{root}/model", device="cpu").prompt_embeddings(["x"], ["{}"]).shape[1]
    x = np.random.default_rng(0).normal(size=(12, dim)).astype(np.float32)
    write(tmp_path / "emb.parquet", [f"r{i}" for i in range(12)], x, rows_per_group=5)
    storage.write_atomic(f"{root}/emb/part.parquet", (tmp_path / "emb.parquet").read_bytes())
    storage.write_atomic(f"{root}/queries.txt", b"a cat\na dog\n")
    output = f"{gcs_dir}/search-out"
    parameters = [
        f"--queries_file={root}/queries.txt",
        "--min_similarity=-0.5",
        "--max_results_per_query=4",
        f"--keep_from={root}/emb/part.parquet",
        "--keep_columns=image_embedding",
        "--against_column=image_embedding",
    ]
    argv = _template_argv(root, "search", "search", f"{root}/emb/*.parquet", output, *parameters)
    result = launcher.launch(argv)

    assert result.state == "DONE"
    proto = result.job.proto_pipeline
    assert dict(result.job.proto.labels) == json.loads(JOB_LABELS)
    names = {t.unique_name for t in proto.components.transforms.values()}
    assert {"PlanUnits", "SpreadUnits", "Search", "TopPerQuery", "Summary"} <= names
    (fn,) = [fn for fn in _do_fns(proto) if isinstance(fn, SearchUnit)]
    spec = fn.spec
    assert (spec.model, spec.output, spec.queries) == (f"{root}/model", output, ("a cat", "a dog"))
    assert (spec.top_k, spec.min_similarity, spec.max_results_per_query) == (None, -0.5, 4)
    assert spec.keep_from == (f"{root}/emb/part.parquet",) and fn.queries.shape == (2, dim)
    record = json.loads(storage.read_bytes(f"{output}/_job.json"))
    assert record["inputs"] == [f"{root}/emb/*.parquet"] and record["queries"] == ["a cat", "a dog"]


# -- dedup: every parameter at once ------------------------------------------------------------

# A value for every dedup parameter but job, input, output, and the DedupSpec field it becomes;
# the raw-image ones (model and how it runs) in a case of their own.
DEDUP_FULL = {
    "resume": ("true", "resume", True),
    "embedding_column": ("vec", "embedding_column", "vec"),
    "id_column": ("key", "id_column", "key"),
    "image_column": ("img", "image_column", "img"),
    "keep_columns": ("source", "keep_columns", ("source",)),
    "clusters": ("3", "clusters", 3),
    "fit_rows": ("50", "fit_rows", 50),
    "eps": ("0.02,0.04", "eps", (0.02, 0.04)),
    "seed": ("4", "seed", 4),
    "niter": ("5", "niter", 5),
    "max_cluster_rows": ("100", "max_cluster_rows", 100),
    "block_rows": ("64", "block_rows", 64),
    "shuffle": ("files", "shuffle", "files"),
    "against": ("{root}/dedup-ref/r.parquet", "against", ("{root}/dedup-ref/r.parquet",)),
    "against_eps": ("0.1", "against_eps", 0.1),
    "against_id_column": ("rid", "against_id_column", "rid"),
    "against_embedding_column": ("rvec", "against_embedding_column", "rvec"),
}
DEDUP_IMAGES = {
    "image_column": ("image", "image_column", "image"),
    "id_column": ("id", "id_column", "id"),
    "batch_size": ("7", "batch_size", 7),
    "device": ("cuda", "device", "cuda"),
    "dtype": ("float16", "dtype", "float16"),
    # the reference set's images, embedded by the same model
    "against": ("{root}/in", "against", ("{root}/in",)),
    "against_image_column": ("image", "against_image_column", "image"),
}


def _dedup_parameters() -> set[str]:
    return {
        p["name"]
        for p in METADATA["parameters"]
        if "dedup" in p.get("parentTriggerValues", ["dedup"])
    } - {"job", "input", "output", "model"}


def test_dedup_cases_set_every_dedup_parameter():
    assert set(DEDUP_FULL) | set(DEDUP_IMAGES) == _dedup_parameters()


@pytest.fixture(scope="module")
def gcs_embeddings(gcs_inputs):
    """Embeddings and a reference set with non-default column names, on the bucket."""
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    root, _ = gcs_inputs
    x = np.random.default_rng(0).normal(size=(40, 16)).astype(np.float32)

    def put(path: str, table: pa.Table) -> None:
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        storage.write_atomic(path, buffer.getvalue())

    vec = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 16)
    put(
        f"{root}/dedup-in/e.parquet",
        pa.table(
            {
                "key": [f"k{i}" for i in range(40)],
                "vec": vec,
                "img": pa.array([b"x%d" % i for i in range(40)], pa.binary()),
                "source": ["s"] * 40,
            }
        ),
    )
    ref = pa.FixedSizeListArray.from_arrays(pa.array(x[:3].ravel()), 16)
    put(f"{root}/dedup-ref/r.parquet", pa.table({"rid": ["r0", "r1", "r2"], "rvec": ref}))
    return root, f"{root}/dedup-in/*.parquet"


@pytest.mark.parametrize("case", ["embeddings", "images"])
def test_launch_takes_every_dedup_parameter_to_the_workers(
    case, gcs_inputs, gcs_embeddings, gcs_dir
):
    pytest.importorskip("google.cloud.dataflow", reason="the Dataflow runner (apache-beam[gcp])")
    from clipbeam.transforms.dedup.read import ReadUnit

    root, pattern = gcs_embeddings if case == "embeddings" else gcs_inputs
    full = DEDUP_FULL if case == "embeddings" else DEDUP_IMAGES
    values = {p: v[0].replace("{root}", root) for p, v in full.items()}
    regexes = {p["name"]: p["regexes"] for p in METADATA["parameters"]}
    for p, value in values.items():
        assert all(re.fullmatch(r, value) for r in regexes[p]), (p, value)
    output = f"{gcs_dir}/dedup-{case}"
    argv = _template_argv(root, "dedup-full", "dedup", pattern, output)
    if case == "embeddings":  # no model: the embeddings are read
        argv = [a for a in argv if not a.startswith("--model=")]
    argv += [f"--{p}={value}" for p, value in values.items()]

    result = launcher.launch(argv)

    assert result.state == "DONE"
    (reader,) = [f for f in _do_fns(result.job.proto_pipeline) if isinstance(f, ReadUnit)]
    reached = {p: getattr(reader.spec, v[1]) for p, v in full.items()}
    assert reached == {p: _rooted(v[2], root) for p, v in full.items()}
    assert reader.spec.model == (None if case == "embeddings" else f"{root}/model")
    record = json.loads(storage.read_bytes(f"{output}/_job.json"))
    for p, v in full.items():
        assert record[v[1]] == _listed(_rooted(v[2], root)), p
    assert not storage.exists(f"{output}/summary.json")
