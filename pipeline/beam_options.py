"""Beam's pipeline options on a ``clipbeam`` command line: typos, refused values, runner names.

Arguments clipbeam does not define are Beam pipeline options (``--runner``,
``--direct_num_workers``, ``--temp_location``...); an argument that is neither is an error, not a
warning, so a typo such as ``--min-scor`` cannot silently change what a job keeps. Beam's
options are parsed here with Beam's own parser, so a value Beam refuses
(``--direct_num_workers abc``, ``--runner`` without a name, an unknown runner) is one
:class:`~clipbeam.pipeline.options.LaunchError` naming the option, not Beam's usage and exit.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import re
import sys
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import NoReturn

from clipbeam.pipeline.options import LaunchError

__all__ = [
    "EXTRA_RUNNERS",
    "check_beam_args",
    "check_misspelled",
    "resolve_beam_args",
    "runner_name",
]

# Runners Beam ships but does not resolve by name (``apache_beam.runners.runner._RUNNER_MAP``
# lists only the runners of StandardOptions.KNOWN_RUNNER_NAMES): the class name, lower case,
# to the dotted path Beam's create_runner imports.
EXTRA_RUNNERS = {"daskrunner": "apache_beam.runners.dask.dask_runner.DaskRunner"}
# Beam's DaskRunner puts up to 128 elements of a Create in one Dask partition, which one worker
# runs as one task: a job of fewer than 129 work units would run on a single worker. A unit (a
# row group through the model) is a large task, so clipbeam makes each its own partition unless
# one of these is given.
_DASK_PARTITIONING = ("--dask_partition_size", "--dask_npartitions")
# clipbeam's short spelling of a Beam option, to Beam's own name.
_OPTION_ALIASES = {"--dask_address": "--dask_client_address"}


def resolve_beam_args(extras: Sequence[str]) -> list[str]:
    """Beam's arguments with the names Beam itself does not resolve spelled out.

    ``--runner DaskRunner`` (or ``dask``, any case) becomes the DaskRunner's dotted path, and
    ``--dask_address`` Beam's ``--dask_client_address`` (the scheduler's address). The
    DaskRunner's module is imported where it is asked for, since its options (DaskOptions) are
    Beam options only once it is, and clipbeam's override of its ParDo is installed then
    (:mod:`clipbeam.pipeline.dask_fixes`). A Dask job gets ``--dask_partition_size=1`` (each
    work unit a task of its own) unless it gives ``--dask_partition_size`` or
    ``--dask_npartitions``.

    Raises:
        LaunchError: the DaskRunner is asked for and dask.distributed is not installed.
    """
    out: list[str] = []
    runner_next = False
    for arg in extras:
        name, eq, value = arg.partition("=")
        if runner_next:
            arg = _extra_runner(arg)
        elif name == "--runner" and eq:
            arg = f"--runner={_extra_runner(value)}"
        elif name in _OPTION_ALIASES:
            arg = _OPTION_ALIASES[name] + eq + value
        runner_next = arg == "--runner"
        out.append(arg)
    if any(a.startswith("--dask_") or a.endswith(EXTRA_RUNNERS["daskrunner"]) for a in out):
        _import_dask_runner()
        if not any(a.split("=")[0] in _DASK_PARTITIONING for a in out):
            out.append("--dask_partition_size=1")
    return out


def _import_dask_runner() -> None:
    try:
        import apache_beam.runners.dask.dask_runner  # noqa: F401 (registers DaskOptions)

        from clipbeam.pipeline import dask_fixes

        dask_fixes.install()
    except ImportError as exc:
        raise LaunchError(
            "the DaskRunner needs dask and dask.distributed, which are not installed "
            f"({type(exc).__name__}); install them with pip install 'clipbeam[dask]'"
        ) from None


def _extra_runner(runner: str) -> str:
    key = runner.strip().lower()
    return EXTRA_RUNNERS.get(key, EXTRA_RUNNERS.get(key + "runner", runner))


# Beam's worker counts and their ranges: a negative DirectRunner worker count fails inside Beam
# with an IndexError, a huge one starts that many threads (0 means one per CPU core).
_BEAM_COUNTS = {
    "direct_num_workers": (0, 1024),
    "num_workers": (0, 100_000),
    "max_num_workers": (0, 100_000),
    "number_of_worker_harness_threads": (1, 10_000),
}


def check_beam_args(extras: list[str], parser: argparse.ArgumentParser, command: str) -> None:
    """Fails on arguments that are neither clipbeam's nor Beam's (typos must not be ignored), and
    on Beam options whose value Beam would refuse.

    Beam itself only logs "Discarding unparseable args"; this collects Beam's options the way
    ``PipelineOptions.get_all_options`` does and turns a leftover into an error with a hint. A
    value Beam's parser refuses (``--direct_num_workers abc``) would make Beam print its whole
    usage and exit; here it is one :class:`LaunchError` naming the option, the value and what
    the option takes.

    An unknown option is found without importing Beam (a few seconds) when Beam is not loaded
    yet: its option names are then those of :mod:`clipbeam.pipeline.beam_names`, a list written
    from the installed Beam version (no user-defined options class can exist before Beam is
    imported). Values are checked with Beam's parser, once the names are known to be right.
    """
    if not extras:
        return
    snapshot = _snapshot_names()
    if snapshot is not None:
        flags = [a for a in extras if _is_flag(a)]
        unknown = [a for a in flags if a.split("=", 1)[0] not in snapshot]
        if unknown or not flags:
            _unknown_argument_error(unknown or extras, parser, snapshot, command)
    beam_parser = _beam_parser()
    try:
        beam_namespace, unknown = beam_parser.parse_known_args(extras)
    except argparse.ArgumentError as exc:
        raise _beam_value_error(exc, beam_parser, extras) from None
    except (TypeError, ValueError) as exc:
        # A few of Beam's options check their value in a custom action, not through argparse.
        raise LaunchError(
            f"a Beam pipeline option in {' '.join(extras)!r} has a value Beam cannot take: {exc}"
        ) from None
    if unknown:
        _unknown_argument_error(unknown, parser, _option_strings(beam_parser), command)
    runner_name(getattr(beam_namespace, "runner", None))  # raises for a runner Beam does not know
    for option, (low, high) in _BEAM_COUNTS.items():
        value = getattr(beam_namespace, option, None)
        if value is not None and not low <= value <= high:
            raise LaunchError(
                f"--{option} {value}: expected a value in [{low}, {high}] (Beam takes any "
                "integer here, then fails or hangs on the first bundle)"
            )


def check_misspelled(argv: Sequence[str], parser: argparse.ArgumentParser) -> None:
    """Fails on the first option of ``argv`` that is neither its job's nor Beam's, if any.

    Called when argparse refused the command line (a required option missing): ``--inptu x``
    then says "did you mean --input?" rather than that --input is missing.
    """
    jobs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    command = next((a for a in argv if a in jobs), None)
    if command is None:
        return
    own = set(_option_strings(jobs[command])) | set(_OPTION_ALIASES)
    beam_names = _snapshot_names()
    if beam_names is None:
        beam_names = frozenset(_option_strings(_beam_parser()))
    for arg in argv:
        name = arg.split("=", 1)[0]
        if arg.startswith("--") and name not in own and name not in beam_names:
            _unknown_argument_error([name], parser, beam_names, command)


def _is_flag(arg: str) -> bool:
    return arg.startswith("-") and not re.fullmatch(r"-[\d.]+(e-?\d+)?", arg)


def _option_strings(parser: argparse.ArgumentParser) -> list[str]:
    return [s for a in parser._actions for s in a.option_strings]


def _snapshot_names() -> frozenset[str] | None:
    """Beam's option names without importing Beam, or ``None`` where they must come from Beam.

    ``None`` when Beam is already imported (the live parser costs nothing more and sees
    options classes defined by the caller) or when the installed Beam is not the version the
    list was written from.
    """
    if "apache_beam" in sys.modules:
        return None
    from importlib.metadata import PackageNotFoundError, version

    from clipbeam.pipeline import beam_names

    try:
        installed = version("apache-beam")
    except PackageNotFoundError:
        return None
    return beam_names.OPTION_STRINGS if installed == beam_names.BEAM_VERSION else None


def register_runner_options() -> None:
    """Registers the options of the runners Beam does not import itself (the DaskRunner's
    DaskOptions), where their packages are installed, so that a parser sees them."""
    with contextlib.suppress(LaunchError):  # dask is not installed: no DaskOptions here
        _import_dask_runner()


def write_snapshot(path: Path | None = None) -> Path:
    """Writes :mod:`clipbeam.pipeline.beam_names` from the installed Beam (after upgrading it),
    the DaskRunner's options included (install ``clipbeam[dask]`` first)."""
    import apache_beam

    register_runner_options()
    path = path or Path(__file__).with_name("beam_names.py")
    names = "".join(f'        "{name}",\n' for name in sorted(set(_option_strings(_beam_parser()))))
    path.write_text(
        '"""The option names of Beam\'s ``PipelineOptions`` classes, for finding a mistyped\n'
        "option without importing Beam. Written by ``python -m clipbeam.pipeline.beam_options``\n"
        'from the installed Beam; used only while that version is installed.\n"""\n\n'
        f'BEAM_VERSION = "{apache_beam.__version__}"\n\n'
        f"OPTION_STRINGS = frozenset(\n    {{\n{names}    }}\n)\n",
        encoding="utf-8",
    )
    return path


def _unknown_argument_error(
    unknown: list[str],
    parser: argparse.ArgumentParser,
    beam_names: Collection[str],
    command: str,
) -> NoReturn:
    flags = [a for a in unknown if _is_flag(a)]
    if not flags:
        raise LaunchError(
            f"unexpected argument {unknown[0]!r} (options take the form --name value; quote "
            "globs so the shell does not expand them)"
        )
    subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    # A job's own parser (clipbeam search, dedup) has no subcommands: it is the only job known.
    jobs = subcommands[0].choices if subcommands else {command: parser}
    name = flags[0].split("=", 1)[0]
    owners = [job for job, p in jobs.items() for a in p._actions if name in a.option_strings]
    if owners:
        raise LaunchError(f"{name} is an option of clipbeam {' and '.join(owners)}, not {command}")
    known = [*_option_strings(jobs[command]), *sorted(beam_names)]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise LaunchError(
        f"unknown option {name} for clipbeam {command}: it is neither a clipbeam option nor a "
        f"Beam pipeline option{hint}"
    )


def _beam_parser() -> argparse.ArgumentParser:
    """Beam's own option parser, raising ``argparse.ArgumentError`` instead of exiting."""
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    class BeamParser(_BeamArgumentParser):
        def error(self, message: str) -> NoReturn:
            # Reached for problems argparse does not tie to one option (exit_on_error=False
            # lets the others through as ArgumentError).
            raise LaunchError(f"Beam pipeline options: {message}")

    beam_parser = BeamParser(allow_abbrev=False, add_help=False, exit_on_error=False)
    # Beam may see an options class twice (e.g. re-imported in __main__); register each once.
    classes = {str(cls): cls for cls in PipelineOptions.__subclasses__()}
    for cls in classes.values():
        cls._add_argparse_args(beam_parser)
    return beam_parser


# argparse's messages for a refused value: "invalid int value: 'abc'", "invalid choice: 'x' (...".
_REFUSED_VALUE = re.compile(r"^invalid (?:choice|\S+ value): (.+?)(?: \(choose from .*)?$")
_IGNORED_VALUE = re.compile(r"^ignored explicit argument (.*)$")
_EXPECTED_BY_TYPE = {"int": "an integer", "float": "a number", "loads": "a JSON value"}


def _beam_value_error(
    exc: argparse.ArgumentError, beam_parser: argparse.ArgumentParser, extras: Sequence[str]
) -> LaunchError:
    """One message for a Beam option whose value argparse refused: option, value, expectation."""
    action = next(
        (a for a in beam_parser._actions if "/".join(a.option_strings) == exc.argument_name),
        None,
    )
    if action is None:
        return LaunchError(f"Beam pipeline option {exc.argument_name}: {exc.message}")
    # Name the option as it was typed (Beam accepts --experiment and --experiments...).
    typed = {a.split("=", 1)[0] for a in extras}
    name = next((s for s in action.option_strings if s in typed), action.option_strings[0])
    type_name = getattr(action.type, "__name__", None)
    if action.choices is not None:
        expected = f"one of {', '.join(str(c) for c in action.choices)}"
    elif action.dest == "runner":
        expected = "a runner name such as DirectRunner or DataflowRunner"
    elif type_name is None:
        expected = "a value"
    else:
        expected = _EXPECTED_BY_TYPE.get(type_name, f"a value of type {type_name}")
    refused = _REFUSED_VALUE.match(exc.message)
    if refused:
        return LaunchError(f"Beam pipeline option {name} takes {expected}, got {refused.group(1)}")
    ignored = _IGNORED_VALUE.match(exc.message)
    if ignored:
        return LaunchError(
            f"Beam pipeline option {name} is an on/off flag and takes no value, got "
            f"{ignored.group(1)}: pass {name} alone to turn it on, leave it out to keep it off"
        )
    if exc.message.startswith("expected "):
        return LaunchError(
            f"Beam pipeline option {name} is given without a value: it takes {expected} "
            f"({name} VALUE or {name}=VALUE)"
        )
    return LaunchError(f"Beam pipeline option {name}: {exc.message}")


def runner_name(runner: str | None) -> str:
    """The class name of the Beam runner that ``--runner`` selects, resolved as Beam does.

    Beam accepts a runner's class name in any case and with or without its ``Runner`` suffix
    (``dataflow``, ``DataflowRunner``), or the dotted path of a runner class.

    Args:
        runner: the ``--runner`` value; ``None`` for Beam's default.

    Returns:
        The runner's class name, e.g. ``"DataflowRunner"`` (``"DirectRunner"`` for ``None``).

    Raises:
        LaunchError: a name that is neither a runner Beam knows nor a dotted path.
    """
    from apache_beam.options.pipeline_options import StandardOptions

    if runner is None:
        return StandardOptions.DEFAULT_RUNNER
    try:
        # What apache_beam.runners.runner.create_runner resolves names with.
        from apache_beam.runners.runner import _RUNNER_MAP as known
    except ImportError:
        known = {name.lower(): name for name in StandardOptions.KNOWN_RUNNER_NAMES}
    key = runner.strip().lower()
    path = known.get(key, known.get(key + "runner", runner))
    if "." not in path and path not in StandardOptions.KNOWN_RUNNER_NAMES:
        raise LaunchError(
            f"Beam pipeline option --runner takes a runner name such as DirectRunner or "
            f"DataflowRunner (one of {', '.join(StandardOptions.KNOWN_RUNNER_NAMES)}) or the "
            f"dotted path of a PipelineRunner subclass, got {runner!r}"
        )
    return path.rsplit(".", 1)[-1]


if __name__ == "__main__":
    print(f"wrote {write_snapshot()}")
