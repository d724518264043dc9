"""The job parser: dash and underscore spellings, value types, required options, help."""

from __future__ import annotations

import pytest

from clipbeam.pipeline.arguments import parse_args
from clipbeam.pipeline.options import LaunchError, build_parser
from tests.pipeline.cmdline import BASE, error_of, parse


def test_dash_and_underscore_spellings_are_the_same_option():
    dashed = parse(
        "score", "--image-column", "jpg", "--text-column", "caption", "--batch-size", "8"
    )
    under = parse("score", "--image_column", "jpg", "--text_column", "caption", "--batch_size", "8")
    assert dashed.spec == under.spec
    assert under.spec.image_column == "jpg" and under.spec.batch_size == 8


def test_input_takes_several_patterns():
    # An unquoted glob expanded by the shell arrives as several values: they are all inputs.
    parsed = parse_args(["embed", "--input", "a.parquet", "b.parquet", *BASE[2:], "--input", "c"])
    assert parsed.inputs == ("a.parquet", "b.parquet", "c")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "0"], "--batch-size/--batch_size: expected a value in [1, 65536], got 0"),
        (["--batch-size", "x"], "expected an integer, got 'x'"),
        (["--device", "tpu"], "invalid choice: 'tpu'"),
        (["--image-format", "jpeg"], "invalid choice: 'jpeg'"),
        (["--http-timeout", "0"], "expected a value in (0, 86400.0], got 0"),
        (["--resume=maybe"], "expected true or false, got 'maybe'"),
        (["stray"], "unexpected argument 'stray'"),
    ],
)
def test_malformed_values(args, message):
    assert message in error_of("embed", *args)


def test_resume_accepts_flex_template_spelling():
    assert parse("embed", "--resume").spec.resume is True
    assert parse("embed", "--resume=true").spec.resume is True
    assert parse("embed", "--resume=false").spec.resume is False


def test_required_options():
    with pytest.raises(LaunchError, match="required: --input"):
        parse_args(["embed", "--output", "o", "--model", "m"])
    with pytest.raises(LaunchError, match="invalid choice: 'frob'"):
        parse_args(["frob"])


def test_help_lists_dashed_spelling_only(capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["filter", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "--image-column NAME" in text and "--image_column NAME" not in text
    assert "--top-fraction F" in text
