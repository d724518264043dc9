"""``clipbeam demo``: the whole product in one offline command, on data whose answers are known.

It generates image-caption pairs of simple scenes (:mod:`clipbeam.pipeline.demo.scenes`), a
tenth of them with a deliberately wrong caption, then runs the real ``score`` and ``filter`` jobs
on Beam's DirectRunner with a bundled demo model, and compares what the filter rejected with the
truth::

    clipbeam demo --output demo-output
    clipbeam demo --model demo-chinese-clip --output demo-output-zh   # Chinese captions

The filter's ``--min-score`` is the one calibrated for the model on held-out scenes when it was
trained (``clipbeam_calibration.json`` in the checkpoint folder), unless ``--min-score`` is given.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from clipbeam.transforms.spec import DTYPES

__all__ = ["MARKER_FILE", "DemoResult", "main", "run_demo"]

_DEFAULT_OUTPUT = "clipbeam-demo"
# Written first into the output folder: marks it as the demo's, so a rerun may replace it.
MARKER_FILE = "demo.json"
_PARTS = ("data", "score", "filter")


@dataclass(frozen=True)
class DemoResult:
    """What the demo found.

    Attributes:
        output: the output folder.
        model: the model used.
        min_score: the filter threshold used.
        mismatched: planted mismatches in the data.
        caught: planted mismatches the filter rejected.
        good: pairs whose caption is true.
        good_rejected: true pairs the filter rejected.
        errors: rows neither job could process (0 unless something is broken).
        seconds: wall time of the whole demo.
    """

    output: str
    model: str
    min_score: float
    mismatched: int
    caught: int
    good: int
    good_rejected: int
    errors: int
    seconds: float


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clipbeam demo",
        description="Generate image-caption pairs with planted wrong captions, score and filter "
        "them with a bundled model on the DirectRunner, and report what the filter caught. "
        "Runs offline.",
    )
    parser.add_argument(
        "--output", default=_DEFAULT_OUTPUT, help=f"output folder (default {_DEFAULT_OUTPUT})"
    )
    parser.add_argument(
        "--model",
        default="demo-clip",
        help="demo-clip (English captions, the default) or demo-chinese-clip (Chinese captions); "
        "any checkpoint folder with a clipbeam_calibration.json, or with --min-score",
    )
    parser.add_argument("--rows", type=int, default=2000, help="pairs to generate (2000)")
    parser.add_argument(
        "--mismatch-fraction",
        type=float,
        default=0.1,
        help="fraction of captions made wrong on purpose (0.1)",
    )
    parser.add_argument("--seed", type=int, default=0, help="data seed (0)")
    parser.add_argument(
        "--min-score",
        type=float,
        help="filter threshold on clip_score (default: the model's calibrated value)",
    )
    parser.add_argument(
        "--language",
        choices=("en", "zh"),
        help="caption language (default: the model's, from its calibration file)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=256, help="rows per model call in the jobs (256)"
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="auto",
        help="dtype the jobs' model computes in, as the jobs' --dtype (auto)",
    )
    return parser


def run_demo(argv: Sequence[str] | None = None, *, quiet: bool = False) -> DemoResult:
    """Runs the demo: generate, score, filter, compare with the truth, print a report.

    Args:
        argv: the arguments after ``clipbeam demo`` (``--output DIR``, ``--model NAME``...).
        quiet: do not print the report (tests).

    Returns:
        The counts the report prints.

    Raises:
        SystemExit: bad arguments (argparse's exit, with a message).
        pipeline.LaunchError: a job refused to start (e.g. the output folder is not writable).
    """
    started = time.monotonic()
    import pyarrow.parquet as pq

    from clipbeam.model.hub import CheckpointError, resolve_source
    from clipbeam.pipeline.cli import run
    from clipbeam.pipeline.demo.recipes import CALIBRATION_FILE
    from clipbeam.pipeline.demo.scenes import write_scenes

    parser = _parser()
    args = parser.parse_args(argv)
    try:
        calibration_path = resolve_source(args.model).get(CALIBRATION_FILE)
    except CheckpointError as exc:
        parser.error(str(exc))
    calibration = json.loads(calibration_path.read_text()) if calibration_path else {}
    min_score = args.min_score if args.min_score is not None else calibration.get("min_score")
    if min_score is None:
        parser.error(
            f"{args.model} has no {CALIBRATION_FILE} with a calibrated min_score; "
            "pass --min-score X (and --language en|zh)"
        )
    language = args.language or calibration.get("text_column", "caption_en").removeprefix(
        "caption_"
    )
    text_column = f"caption_{language}"

    out = Path(args.output)
    data = out / "data" / "scenes.parquet"
    say = (lambda *_: None) if quiet else print
    _prepare_output(out, parser)
    record = {"arguments": vars(args), "text_column": text_column, "min_score": min_score}
    (out / MARKER_FILE).write_text(json.dumps({**record, "finished": False}, indent=2) + "\n")
    say(
        f"clipbeam demo: generating {args.rows:,} image-caption pairs, "
        f"{args.mismatch_fraction:.0%} with a wrong caption -> {data}"
    )
    try:
        write_scenes(data, args.rows, seed=args.seed, mismatch_fraction=args.mismatch_fraction)
    except ValueError as exc:
        parser.error(str(exc))
    common = [
        "--input",
        str(data),
        "--model",
        args.model,
        "--text-column",
        text_column,
        "--id-column",
        "id",
        "--keep-columns",
        f"is_mismatched,{text_column},true_{text_column}",
        "--batch-size",
        str(args.batch_size),
        "--dtype",
        args.dtype,
        "--runner",
        "DirectRunner",
    ]
    say(f"clipbeam demo: scoring with {args.model} -> {out / 'score'}")
    run(["score", "--output", str(out / "score"), *common])
    say(f"clipbeam demo: filtering at --min-score {min_score} -> {out / 'filter'}")
    run(["filter", "--output", str(out / "filter"), "--min-score", str(min_score), *common])

    def rows(folder: Path) -> list[dict]:
        files = sorted(folder.glob("*.parquet"))
        return [r for f in files for r in pq.read_table(f).to_pylist()]

    scores = rows(out / "score" / "scores")
    rejected = rows(out / "filter" / "rejected")
    summaries = [json.loads((out / d / "summary.json").read_text()) for d in ("score", "filter")]
    mismatched = sum(r["is_mismatched"] for r in scores)
    result = DemoResult(
        output=str(out),
        model=args.model,
        min_score=float(min_score),
        mismatched=mismatched,
        caught=sum(r["is_mismatched"] for r in rejected),
        good=len(scores) - mismatched,
        good_rejected=sum(not r["is_mismatched"] for r in rejected),
        errors=sum(s["error_rows"] for s in summaries),
        seconds=time.monotonic() - started,
    )
    (out / MARKER_FILE).write_text(
        json.dumps({**record, "finished": True, "result": asdict(result)}, indent=2) + "\n"
    )
    if not quiet:
        print(_report(result, scores, rejected, text_column, language, calibration))
    return result


def _prepare_output(out: Path, parser: argparse.ArgumentParser) -> None:
    """Creates the output folder; replaces the results of an earlier demo run, nothing else."""
    if out.is_file():
        parser.error(f"--output {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER_FILE).is_file():
            parser.error(
                f"--output {out} is not empty and holds no earlier demo run ({MARKER_FILE}); "
                "choose a new or empty folder"
            )
        # Our own earlier run: its results are replaced, so a rerun starts clean.
        for part in _PARTS:
            if (out / part).exists():
                shutil.rmtree(out / part)
    out.mkdir(parents=True, exist_ok=True)


def _percent(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else "n/a"


def _report(
    result: DemoResult,
    scores: list[dict],
    rejected: list[dict],
    text_column: str,
    language: str,
    calibration: dict,
) -> str:
    """The text a new user reads: what happened, how well, where the files are, what next."""
    good_scores = [r["clip_score"] for r in scores if not r["is_mismatched"]]
    bad_scores = [r["clip_score"] for r in scores if r["is_mismatched"]]
    origin = "calibrated on held-out scenes" if "min_score" in calibration else "given"
    out = result.output
    lines = [
        "",
        f"clipbeam demo: {result.good + result.mismatched:,} pairs, "
        f"{result.mismatched:,} with a planted wrong caption, model {result.model}, "
        f"filter --min-score {result.min_score} ({origin})",
        "",
        f"  planted mismatches caught : {result.caught:,} of {result.mismatched:,} "
        f"({_percent(result.caught, result.mismatched)})",
        f"  good pairs rejected       : {result.good_rejected:,} of {result.good:,} "
        f"({_percent(result.good_rejected, result.good)})",
    ]
    if good_scores and bad_scores:
        lines.append(
            f"  mean clip_score           : {sum(good_scores) / len(good_scores):.2f} for good "
            f"pairs, {sum(bad_scores) / len(bad_scores):.2f} for mismatched ones"
        )
    if result.errors:
        lines.append(f"  rows with errors          : {result.errors} (see {out}/*/errors/)")
    caught = [r for r in rejected if r["is_mismatched"]][:2]
    if caught:
        lines += ["", "  caught, for example:"]
        for r in caught:
            lines.append(
                f"    {r['id']}: caption {r[text_column]!r} but the image shows "
                f"{r['true_' + text_column]!r} (clip_score {r['clip_score']:.2f})"
            )
    other, suffix = ("demo-chinese-clip", "zh") if language == "en" else ("demo-clip", "en")
    lines += [
        "",
        f"outputs in {out}/:",
        "  data/scenes.parquet            the generated pairs: JPEG bytes, captions, the truth",
        "  score/scores/                  clip_score of every pair",
        "  filter/kept/  filter/rejected/ the filter's split; rejected rows give reject_reason",
        "  */summary.json                 counts and timings of each job",
        "",
        "next:",
        f"  clipbeam report {out}/filter      (an HTML page: score histogram, rejected pairs)",
        f"  clipbeam filter --input {out}/data/scenes.parquet --output {out}/top "
        f"--model {result.model} --text-column {text_column} --top-fraction 0.8",
        f"  clipbeam demo --model {other} --output {out}-{suffix}",
        "  clipbeam score --help",
        f"(done in {result.seconds:.0f}s)",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``clipbeam demo`` (also ``python -m clipbeam.pipeline.demo``).

    Returns:
        0 on success, 2 when a job refused to start (the reason is printed on one line).
    """
    from clipbeam.pipeline.options import LaunchError

    try:
        run_demo(argv)
    except LaunchError as exc:
        print(f"clipbeam demo: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
