"""Beam's options on a clipbeam command line: passed through, typos caught, refused values named."""

from __future__ import annotations

import pytest

from tests.pipeline.cmdline import error_of, parse


def test_unknown_arguments_go_to_beam():
    parsed = parse(
        "embed",
        "--runner",
        "DirectRunner",
        "--direct_running_mode=multi_processing",
        "--direct_num_workers",
        "2",
        "--temp_location",
        "/tmp/x",
    )
    assert parsed.beam_args == (
        "--runner",
        "DirectRunner",
        "--direct_running_mode=multi_processing",
        "--direct_num_workers",
        "2",
        "--temp_location",
        "/tmp/x",
    )


def test_typo_is_an_error_with_a_suggestion():
    assert "did you mean --temp_location" in error_of("embed", "--tmp_location", "/tmp/x")
    assert "neither a clipbeam option nor a Beam" in error_of("embed", "--min-scor", "0.3")


def test_option_of_another_job():
    assert error_of("embed", "--min-score", "0.3") == (
        "--min-score is an option of clipbeam filter, not embed"
    )


# -- Beam's options: a value Beam would refuse is a LaunchError, not Beam's usage and exit 2 ------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--direct_num_workers", "abc"],
            "Beam pipeline option --direct_num_workers takes an integer, got 'abc'",
        ),
        (["--num_workers=many"], "Beam pipeline option --num_workers takes an integer, got 'many'"),
        (["--profile_sample_rate", "x"], "--profile_sample_rate takes a number, got 'x'"),
        (
            ["--direct_running_mode", "bogus"],
            "Beam pipeline option --direct_running_mode takes one of in_memory, "
            "multi_threading, multi_processing, got 'bogus'",
        ),
        (
            ["--runner"],
            "Beam pipeline option --runner is given without a value: it takes a runner name "
            "such as DirectRunner or DataflowRunner (--runner VALUE or --runner=VALUE)",
        ),
        (["--runner", "--direct_num_workers", "2"], "--runner is given without a value"),
        (["--experiments"], "Beam pipeline option --experiments is given without a value"),
        (["--runner", "bogus"], "Beam pipeline option --runner takes a runner name such as"),
        (["--runner="], "or the dotted path of a PipelineRunner subclass, got ''"),
        (
            ["--streaming=true"],
            "Beam pipeline option --streaming is an on/off flag and takes no value, got 'true'",
        ),
        (
            ["--sdk_harness_log_level_overrides", "nojson"],
            "--sdk_harness_log_level_overrides takes a JSON value, got 'nojson'",
        ),
        (["--sdk_harness_log_level_overrides", "[1]"], "has a value Beam cannot take"),
    ],
)
def test_bad_beam_option_values(args, message):
    found = error_of("embed", *args)
    assert message in found
    assert "\n" not in found and "usage:" not in found


@pytest.mark.parametrize(
    ("runner", "name"),
    [
        (None, "DirectRunner"),
        ("DataflowRunner", "DataflowRunner"),
        ("dataflow", "DataflowRunner"),
        ("DATAFLOWRUNNER", "DataflowRunner"),
        ("direct", "DirectRunner"),
        ("prism", "PrismRunner"),
        ("apache_beam.runners.dataflow.dataflow_runner.DataflowRunner", "DataflowRunner"),
        ("my_package.runners.CustomRunner", "CustomRunner"),
    ],
)
def test_runner_spellings_beam_accepts(runner, name):
    from clipbeam.pipeline.beam_options import runner_name

    assert runner_name(runner) == name
    if runner is not None:
        assert parse("embed", "--runner", runner).beam_args == ("--runner", runner)
