"""The command line: spellings, defaults, Beam pass-through, and argument errors with a message."""

from __future__ import annotations

import pytest

from clipbeam.pipeline.options import LaunchError, build_parser, parse_args

BASE = ["--input", "data/*.parquet", "--output", "out", "--model", "ckpt"]


def parse(command: str, *args: str, read_text=None):
    return parse_args([command, *BASE, *args], read_text=read_text)


def error_of(command: str, *args: str, read_text=None) -> str:
    with pytest.raises(LaunchError) as info:
        parse(command, *args, read_text=read_text)
    return str(info.value)


def test_defaults():
    parsed = parse("embed")
    spec = parsed.spec
    assert parsed.command == "embed"
    assert parsed.inputs == ("data/*.parquet",)
    assert parsed.beam_args == ()
    assert (spec.image_column, spec.text_column, spec.id_column) == ("image", "text", None)
    assert (spec.image_format, spec.batch_size, spec.device) == ("auto", 32, "auto")
    assert (spec.dtype, spec.embedding_dtype, spec.resume) == ("auto", "float32", False)
    assert spec.options["input"] == ["data/*.parquet"]


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


def test_none_column_for_single_modality_embed():
    assert parse("embed", "--text-column", "none").spec.text_column is None
    assert parse("embed", "--image-column", "NONE").spec.image_column is None
    assert "embed needs an image column or a text column" in error_of(
        "embed", "--text-column", "none", "--image-column", "none"
    )
    assert "score needs both" in error_of("score", "--text-column", "none")


def test_list_options():
    spec = parse("embed", "--keep-columns", "url, width", "--keep_columns", "height").spec
    assert spec.keep_columns == ("url", "width", "height")
    assert "--keep-columns repeats url" in error_of("embed", "--keep-columns", "url,url")
    assert "empty name" in error_of("embed", "--keep-columns", "url,,x")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "0"], "--batch-size/--batch_size: expected a value in [1, inf], got 0"),
        (["--batch-size", "x"], "expected an integer, got 'x'"),
        (["--device", "tpu"], "invalid choice: 'tpu'"),
        (["--image-format", "jpeg"], "invalid choice: 'jpeg'"),
        (["--http-timeout", "0"], "expected a value in (0, inf], got 0"),
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


def test_filter_conflicts():
    assert "not both" in error_of("filter", "--min-score", "0.2", "--top-fraction", "0.3")
    assert "needs at least one rule" in error_of("filter")
    assert "--reject-concepts needs --concept-threshold" in error_of(
        "filter", "--reject-concepts", "watermark"
    )
    assert "but --reject-concepts is not" in error_of("filter", "--concept-threshold", "0.2")
    assert "(0.0, 1.0], got 1.5" in error_of("filter", "--top-fraction", "1.5")
    assert "[-1.0, 1.0], got 2" in error_of("filter", "--min-score", "2")
    assert "[1.0, inf], got 0.5" in error_of("filter", "--max-aspect-ratio", "0.5")


def test_filter_spec():
    spec = parse(
        "filter",
        "--top_fraction",
        "0.3",
        "--min-image-side",
        "16",
        "--reject-concepts",
        "watermark, text",
        "--concept-threshold",
        "0.25",
    ).spec
    assert spec.top_fraction == 0.3 and spec.min_image_side == 16
    assert spec.reject_concepts == ("watermark", "text") and spec.concept_threshold == 0.25
    assert spec.templates == ("a photo of a {}.",)


def test_classify_labels():
    spec = parse(
        "classify", "--labels", "cat,dog", "--template", "a {} photo.", "--top-k", "1"
    ).spec
    assert spec.labels == ("cat", "dog") and spec.templates == ("a {} photo.",) and spec.top_k == 1
    assert spec.text_column is None  # classify reads images only
    assert "needs candidate labels" in error_of("classify")
    assert "not both" in error_of("classify", "--labels", "a", "--labels-file", "f")
    assert "exactly one '{}'" in error_of("classify", "--labels", "a", "--template", "a photo")
    assert "--labels repeats cat" in error_of("classify", "--labels", "cat,cat")


def test_labels_file(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("cat\n\n  dog \nsea otter\n", encoding="utf-8")
    parsed = parse("classify", "--labels-file", str(path))
    assert parsed.spec.labels == ("cat", "dog", "sea otter")
    assert parsed.labels_file == str(path)

    missing = error_of("classify", "--labels-file", str(tmp_path / "nope.txt"))
    assert missing == f"--labels-file {tmp_path / 'nope.txt'} does not exist"
    (tmp_path / "empty.txt").write_text("\n \n")
    assert "holds no labels" in error_of("classify", "--labels-file", str(tmp_path / "empty.txt"))
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00cat")
    assert "is not UTF-8" in error_of("classify", "--labels-file", str(tmp_path / "bin.txt"))


def test_help_lists_dashed_spelling_only(capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["filter", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "--image-column NAME" in text and "--image_column NAME" not in text
    assert "--top-fraction F" in text


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
    from clipbeam.pipeline.options import runner_name

    assert runner_name(runner) == name
    if runner is not None:
        assert parse("embed", "--runner", runner).beam_args == ("--runner", runner)
