"""Every job over the corpus of broken and unusual inputs: no crash, each row in exactly one output.

Each job runs once over the whole corpus (tests/reliability/corpus.py: about 60 cases in four
Parquet files and an empty one). Valid but unusual inputs must come out as output rows; every
other row must land in ``errors/`` with the expected ``error_type`` and a message a person can
act on, with credentials redacted; ``summary.json`` and the Beam counters must add up.
"""

from __future__ import annotations

import logging

import pyarrow.parquet as pq
import pytest

from tests.pipeline.jobtools import JobRun, run_job
from tests.reliability.conftest import PASSWORD
from tests.reliability.corpus import JOB_OPTIONS, SIGNATURE, Corpus, build_corpus

# kind -> (extra options, output folders, whether the job reads captions)
JOBS = {
    "embed": ((), ("embeddings",), True),
    "score": ((), ("scores",), True),
    # Rules that the unusual-but-valid rows trip, to see them rejected rather than lost.
    "filter": (("--min-image-side", "2", "--min-text-chars", "1"), ("kept", "rejected"), True),
    "classify": (("--labels", "cat,dog,bicycle"), ("labels",), False),
}
SECRETS = (PASSWORD, SIGNATURE)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, image_server) -> Corpus:
    return build_corpus(tmp_path_factory.mktemp("reliability") / "corpus", image_server)


@pytest.mark.parametrize("kind", list(JOBS))
def test_every_row_lands_in_exactly_one_output(
    kind, corpus, clip_checkpoint, tmp_path, caplog, capfd
):
    extra, folders, reads_text = JOBS[kind]
    caplog.set_level(logging.INFO)
    output = str(tmp_path / "out")
    run = run_job(kind, corpus.pattern, output, clip_checkpoint, *JOB_OPTIONS, *extra)

    cases = corpus.by_id()
    written = [i for folder in folders for i in _column(run, folder, "id")]
    errors = {row["id"]: row for row in run.table("errors").to_pylist()}
    assert sorted(written + list(errors)) == sorted(cases)  # nothing lost...
    assert len(set(written)) == len(written) and not set(written) & set(errors)  # ...nor doubled

    expected = {i: c.expected(reads_text) for i, c in cases.items()}
    assert {i: e["error_type"] for i, e in errors.items()} == {
        i: t for i, t in expected.items() if t is not None
    }
    for case_id, row in errors.items():
        assert cases[case_id].message in row["error_message"], (case_id, row["error_message"])
        assert row["source_file"].endswith(".parquet") and row["row_number"] >= 0

    summary = run.summary
    assert summary["input_rows"] == len(cases) == summary["output_rows"] + summary["error_rows"]
    assert summary["error_rows"] == len(errors) and summary["output_rows"] == len(written)
    footers = [pq.read_metadata(f) for f in corpus.folder.glob("*.parquet")]
    groups = [m.row_group(g).num_rows for m in footers for g in range(m.num_row_groups)]
    assert summary["units"] == sum(1 for rows in groups if rows)  # the empty file adds no unit
    for name in ("input_rows", "output_rows", "error_rows"):
        assert run.counters[name] == summary[name], name

    if kind == "filter":
        rejected = run.table("rejected")
        reasons = dict(
            zip(rejected["id"].to_pylist(), rejected["reject_reason"].to_pylist(), strict=True)
        )
        assert reasons["1x1"] == ["min_image_side"] and reasons["1x2000"] == ["min_image_side"]
        assert reasons["caption-empty"] == reasons["caption-blank"] == ["min_text_chars"]
        assert summary["kept"] + summary["rejected"] == summary["output_rows"]

    # Credentials in image URLs appear nowhere: not in error rows, logs or printed output.
    printed = capfd.readouterr()
    for secret in SECRETS:
        assert secret not in str(errors), secret
        assert secret not in caplog.text and secret not in printed.out + printed.err, secret


def _column(run: JobRun, folder: str, name: str) -> list:
    table = run.table(folder)
    return table.column(name).to_pylist() if table.num_rows else []
