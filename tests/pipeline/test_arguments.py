"""From a command line to a job: defaults, columns, lists, filter rules, labels and templates."""

from __future__ import annotations

from tests.pipeline.cmdline import error_of, parse


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
