"""Start-up: ``--help`` and argument errors load neither Beam nor torch; typos answer at once.

Each case runs ``clipbeam`` in a fresh interpreter (the test session has Beam loaded already)
and reads which heavy modules it imported, not how long it took.
"""

from __future__ import annotations

import json

import pytest

from clipbeam.model.hub import CheckpointNotFoundError, close_bundled_name, resolve_source
from tests.processes import run_python

HEAVY = ("apache_beam", "torch", "pyarrow", "huggingface_hub")

# Runs clipbeam's console script on ARGV, then prints its exit status and the heavy modules loaded.
_PROBE = f"""
import json, sys
from clipbeam.pipeline.cli import main
try:
    status = main(json.loads(sys.argv[1]))
except SystemExit as exc:
    status = exc.code
print(json.dumps([status, sorted(m for m in {HEAVY} if m in sys.modules)]))
"""


def _clipbeam(tmp_path, *args: str) -> tuple[int, list[str], str]:
    done = run_python("-c", _PROBE, json.dumps(list(args)), cwd=tmp_path, timeout=300)
    status, loaded = json.loads(done.stdout.strip().splitlines()[-1])
    return status, loaded, done.stderr


JOB = ("--input", "in/*.parquet", "--output", "out", "--model", "demo-clip")


@pytest.mark.parametrize(
    "args",
    [["--help"], ["filter", "--help"]],
    ids=["clipbeam", "filter"],
)
def test_help_loads_no_beam_or_torch(tmp_path, args):
    status, loaded, _ = _clipbeam(tmp_path, *args)
    assert status == 0
    assert loaded == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["score", "--input", "x"], "the following arguments are required"),
        (["filter", *JOB, "--min-scor", "0.3"], "did you mean --min-score?"),
        (["score", *JOB, "--tmp_location", "/tmp"], "did you mean --temp_location?"),
        (["score", *JOB, "stray"], "unexpected argument 'stray'"),
        (["embed", *JOB, "--min-score", "0.3"], "is an option of clipbeam filter, not embed"),
        # A typo of a required option: the typo is named, not the option it left missing.
        (["score", "--inptu", "x", "--output", "o", "--model", "m"], "did you mean --input?"),
    ],
    ids=["missing", "clipbeam-typo", "beam-typo", "stray", "other-job", "required-typo"],
)
def test_argument_errors_load_no_beam_or_torch(tmp_path, args, message):
    status, loaded, stderr = _clipbeam(tmp_path, *args)
    assert status == 2
    assert message in stderr
    assert loaded == []


def test_mistyped_model_suggests_the_bundled_name_without_the_hub(tmp_path):
    status, loaded, stderr = _clipbeam(
        tmp_path, "score", "--input", "x", "--output", "out", "--model", "demo-clipp"
    )
    assert status == 2
    assert "did you mean demo-clip?" in stderr
    assert loaded == []  # neither Beam nor huggingface_hub: nothing was retried


def test_beam_options_are_still_checked_and_beam_import_is_quiet(tmp_path):
    status, loaded, stderr = _clipbeam(tmp_path, "score", *JOB, "--direct_num_workers", "abc")
    assert status == 2
    assert "--direct_num_workers takes an integer, got 'abc'" in stderr
    assert "apache_beam" in loaded  # values are checked by Beam's own parser
    assert "apitools" not in stderr


def test_beam_option_names_match_the_installed_beam():
    import apache_beam

    from clipbeam.pipeline import beam_names
    from clipbeam.pipeline.beam_options import (
        _beam_parser,
        _option_strings,
        register_runner_options,
    )

    assert apache_beam.__version__ == beam_names.BEAM_VERSION, (
        "Beam was upgraded: run `python -m clipbeam.pipeline.beam_options`"
    )
    pytest.importorskip("distributed")  # the snapshot holds the DaskRunner's options too
    register_runner_options()
    assert set(_option_strings(_beam_parser())) == beam_names.OPTION_STRINGS


@pytest.mark.parametrize(
    ("source", "meant"),
    [
        ("demo-clipp", "demo-clip"),
        ("demo_clip", "demo-clip"),
        ("Demo-Chinese-Clip", "demo-chinese-clip"),
        ("demo-chinese-cli", "demo-chinese-clip"),
        ("demo-clip", None),
        ("openai/clip-vit-base-patch32", None),
        ("bert-base-uncased", None),
        ("gs://bucket/demo-clipp", None),
    ],
)
def test_close_bundled_name(source, meant):
    assert close_bundled_name(source) == meant


def test_resolve_source_answers_a_typo_at_once():
    with pytest.raises(CheckpointNotFoundError, match=r"did you mean demo-clip\?"):
        resolve_source("demo-clipp")
