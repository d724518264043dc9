"""``clipbeam`` on the command line, and :func:`run` for tests and Python callers.

``run`` parses the arguments, checks everything that can be checked at launch (see
:mod:`clipbeam.pipeline.validate`), builds the job's pipeline and runs it. ``main`` is the console
script:
it turns a :class:`~clipbeam.pipeline.options.LaunchError` into one line on stderr and exit status
2.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from clipbeam.pipeline.arguments import parse_args
from clipbeam.pipeline.options import LaunchError

if TYPE_CHECKING:  # Beam, pyarrow and torch load only once a job will run (not for --help)
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.runner import PipelineResult

    from clipbeam.transforms.spec import JobSpec

__all__ = ["main", "run"]

_log = logging.getLogger("clipbeam")


class _BeamImportNoise(logging.Filter):
    """Drops the warning Beam logs on import when the GCP client libraries are absent.

    ``apache_beam.io.gcp`` logs "apitools not found..." on the root logger whether or not a job
    uses BigQuery; clipbeam never does, so the line is noise on every command.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("apitools not found")


def _quiet_beam_import() -> None:
    root = logging.getLogger()
    if not any(isinstance(f, _BeamImportNoise) for f in root.filters):
        root.addFilter(_BeamImportNoise())


# Subcommands that are not Beam jobs: command -> module whose ``main(argv) -> int`` runs it (or
# ``module:function`` naming another function).
_TOOLS = {
    "dedup": "clipbeam.pipeline.dedup",
    "demo": "clipbeam.pipeline.demo.command",
    "report": "clipbeam.pipeline.report",
    "search": "clipbeam.pipeline.search",
    "train": "clipbeam.pipeline.train",
    "train-head": "clipbeam.pipeline.heads:train_main",
    "convert-head": "clipbeam.pipeline.heads:convert_main",
}


def run(
    argv: Sequence[str] | None = None,
    test_pipeline: beam.Pipeline | None = None,
    *,
    wait: bool = True,
) -> PipelineResult:
    """Runs one clipbeam job.

    Args:
        argv: the command line after the program name, e.g.
            ``["score", "--input", "data/*.parquet", "--output", "out", "--model", "ckpt"]``;
            ``sys.argv[1:]`` when ``None``. Arguments clipbeam does not define are Beam pipeline
            options.
        test_pipeline: a pipeline to build the job on (e.g. a ``TestPipeline``) instead of one
            made from the Beam options in ``argv``.
        wait: wait for the job to finish (a Dataflow launcher may submit and return).

    Returns:
        The Beam pipeline result; the counts are also in its ``clipbeam`` metrics counters and in
        ``OUTPUT/summary.json``.

    Raises:
        LaunchError: a problem found before the pipeline was submitted (bad arguments, input,
            schema, model, output or device); nothing has run and nothing was written.
    """
    return _launch(argv, test_pipeline, wait=wait)[1]


def _launch(
    argv: Sequence[str] | None, test_pipeline: beam.Pipeline | None, *, wait: bool
) -> tuple[JobSpec, PipelineResult]:
    started_at = time.time()
    _quiet_beam_import()
    parsed = parse_args(sys.argv[1:] if argv is None else list(argv))
    spec = parsed.spec
    if spec is None:
        raise LaunchError(f"{parsed.command} is not a job")
    # The arguments are fine: only now load what the job needs.
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    from clipbeam.pipeline.jobs import build_job
    from clipbeam.pipeline.validate import JOB_FILE, job_record, validate
    from clipbeam.transforms import storage

    options = PipelineOptions(list(parsed.beam_args))
    pipeline = test_pipeline
    runner_options = (pipeline.options if pipeline is not None else options).view_as(
        StandardOptions
    )
    runner = runner_options.runner
    if pipeline is not None and runner is None:
        runner = type(pipeline.runner).__name__
    plan = validate(spec, parsed.inputs, runner=runner if isinstance(runner, str) else None)
    if plan.spec.allowed_url_schemes != spec.allowed_url_schemes and spec.image_column:
        _log.info(
            "image paths must be URLs the workers can read (%s); pass --allowed-url-schemes "
            "with file to read paths on the workers' own disks",
            ",".join(plan.spec.allowed_url_schemes),
        )
    plan = dataclasses.replace(plan, spec=_options_as_run(plan.spec))
    spec = plan.spec  # the job as it runs on this runner
    if pipeline is None:
        # After the checks: a Dataflow pipeline checks its options against Cloud Storage.
        pipeline = _new_pipeline(options)
    _log.info(
        "%s: %d rows in %d work units from %d files -> %s",
        spec.kind,
        plan.input_rows,
        len(plan.units),
        len({u.path for u in plan.units}),
        spec.output,
    )

    # Record what this job is before anything is written, so that --resume can tell a rerun of
    # the same job from a different job pointed at the same folder.
    record = (
        json.dumps(job_record(spec, parsed.inputs, plan.units), indent=2, sort_keys=True) + "\n"
    )
    storage.makedirs(spec.output)
    storage.write_atomic(storage.join(spec.output, JOB_FILE), record.encode("utf-8"))

    build_job(pipeline, plan, [storage.absolute(i) for i in parsed.inputs], started_at=started_at)
    result = pipeline.run()
    if wait:
        result.wait_until_finish()
    return spec, result


def _options_as_run(spec: JobSpec) -> JobSpec:
    """``spec`` whose recorded options (``clipbeam.options`` in every output file, and
    ``summary.json``) hold the values the job runs with, not the command line's blanks: the URL
    schemes for this runner, the default template, the labels read from --labels-file."""
    values = json.loads(spec.to_json())
    options = {k: values.get(k, v) for k, v in spec.options.items()}
    return dataclasses.replace(spec, options=options)


def _new_pipeline(options: PipelineOptions) -> beam.Pipeline:
    """A pipeline on the runner ``options`` name; nothing is written yet when it fails.

    Raises:
        LaunchError: the runner's package is not installed (Dataflow needs apache-beam[gcp]),
            or the runner refuses the pipeline options (Dataflow without --project...).
    """
    import apache_beam as beam
    from apache_beam.options.pipeline_options import StandardOptions

    runner = options.view_as(StandardOptions).runner
    try:
        return beam.Pipeline(options=options)
    except ImportError as exc:
        raise LaunchError(f"--runner {runner} cannot be used here: {exc}") from None
    except ValueError as exc:
        # Beam lists one problem per line after a heading: make it one line.
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        problems = "; ".join(lines[1:] if len(lines) > 1 else lines)
        raise LaunchError(
            f"the Beam pipeline options do not fit --runner {runner}: {problems}"
        ) from None


def main(argv: Sequence[str] | None = None) -> int:
    """The ``clipbeam`` console script.

    Returns:
        0 on success, 1 when more than ``--max-error-fraction`` of the rows went to ``errors/``
        (the outputs are written; the most common reason is printed), 2 for a launch error
        (printed as one line, no traceback), 130 when interrupted.
    """
    with _progress_lines():
        return _main(sys.argv[1:] if argv is None else list(argv))


@contextlib.contextmanager
def _progress_lines() -> Iterator[None]:
    """Gives the clipbeam logger a handler on this call's stderr while ``main`` runs (Beam
    configures the root logger itself), and takes it away again: a caller that runs ``main``
    in its own process (a notebook, a test) keeps its logging as it was, and no handler is
    left writing to a stream that was since closed."""
    saved = (list(_log.handlers), _log.level, _log.propagate)
    if not _log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("clipbeam: %(message)s"))
        _log.addHandler(handler)
        _log.setLevel(logging.INFO)
        _log.propagate = False
    try:
        yield
    finally:
        _log.handlers[:], level, _log.propagate = saved
        _log.setLevel(level)


def _main(args: list[str]) -> int:
    _quiet_beam_import()
    if args and args[0] in _TOOLS:
        import importlib

        module, _, function = _TOOLS[args[0]].partition(":")
        return getattr(importlib.import_module(module), function or "main")(args[1:])
    interrupt = _Interrupt()
    try:
        with interrupt:
            spec, _ = _launch(args, None, wait=True)
    except LaunchError as exc:
        print(f"clipbeam: error: {exc}", file=sys.stderr)
        return 2
    except BaseException:
        # Beam re-raises a Ctrl-C that reached a bundle as its own error (a RuntimeError
        # "KeyboardInterrupt [while running ...]"), so the signal itself is what tells.
        if not interrupt.seen:
            raise
        print(
            "clipbeam: interrupted; finished work units are kept, rerun the same command with "
            "--resume to continue",
            file=sys.stderr,
        )
        return 130
    summary = _report(spec)
    failed = _too_many_errors(spec, summary)
    if failed:
        print(f"clipbeam: error: {failed}", file=sys.stderr)
        return 1
    return 0


class _Interrupt:
    """Notes whether SIGINT (Ctrl-C) arrived while the block ran; Python's handling (raising
    KeyboardInterrupt) is kept. Off the main thread, where no handler can be set, nothing is
    noted beyond a KeyboardInterrupt itself."""

    def __init__(self) -> None:
        self.seen = False
        self._previous: Any = None
        self._excepthook: Any = threading.excepthook

    def _handle(self, signum: int, frame: Any) -> None:
        if not self.seen:
            self.seen = True
            # Beam logs the interrupted bundle's traceback on its way out: the one-line hint
            # is the message for a Ctrl-C.
            for handler in [*logging.getLogger().handlers, logging.lastResort]:
                if handler is not None:
                    handler.addFilter(self._quiet)
        previous = self._previous
        if callable(previous):
            previous(signum, frame)
        else:
            raise KeyboardInterrupt

    def __enter__(self) -> _Interrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        self._excepthook = threading.excepthook
        threading.excepthook = self._thread_failed
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if isinstance(exc, KeyboardInterrupt):
            self.seen = True
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        threading.excepthook = self._excepthook

    def _thread_failed(self, args: Any) -> None:
        # Beam's job-service threads die of the interrupted workers; after Ctrl-C that is noise.
        if not self.seen:
            self._excepthook(args)

    @staticmethod
    def _quiet(record: logging.LogRecord) -> bool:
        """Drops Beam's error records (their tracebacks) once Ctrl-C was pressed."""
        return not (record.name.startswith("apache_beam") and record.levelno >= logging.ERROR)


def _report(spec: JobSpec) -> dict | None:
    """Prints the summary's counts after a job run in the foreground; returns the summary."""
    from clipbeam.pipeline.summary import SUMMARY_FILE, counter_names
    from clipbeam.transforms import storage

    path = storage.join(spec.output, SUMMARY_FILE)
    if not storage.exists(path):
        return None  # submitted to a remote runner without waiting: nothing to report yet
    summary = json.loads(storage.read_bytes(path))
    counts = ", ".join(f"{k}={summary[k]}" for k in counter_names(spec.kind) if k in summary)
    print(f"clipbeam {spec.kind}: {counts}; summary: {path}")
    return summary


def _too_many_errors(spec: JobSpec, summary: dict | None) -> str | None:
    """Why the job counts as failed (``--max-error-fraction``), or ``None``."""
    if not summary or not summary.get("input_rows"):
        return None
    limit = spec.max_error_fraction
    share = summary.get("error_rows", 0) / summary["input_rows"]
    if limit is None or share <= limit:
        return None
    from collections import Counter

    import pyarrow.parquet as pq

    from clipbeam.transforms import storage
    from clipbeam.transforms.process import ERRORS_DIR

    errors = storage.join(spec.output, ERRORS_DIR)
    reasons: Counter[str] = Counter()
    for path in storage.list_files(errors):
        with storage.open_input(path) as f:
            reasons.update(pq.read_table(f, columns=["error_type"]).column(0).to_pylist())
    common = ""
    if reasons:
        reason, count = reasons.most_common(1)[0]
        common = f"; most common reason: {reason} ({count} rows)"
    return (
        f"{summary['error_rows']} of {summary['input_rows']} input rows ({share:.0%}) went to "
        f"{errors}, more than --max-error-fraction {limit}{common}. The outputs are written; "
        "check --image-column / --text-column and the rows' files"
    )
