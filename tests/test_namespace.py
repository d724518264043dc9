"""The install layout: the folders model/, transforms/ and pipeline/ import only as
``clipbeam.model``, ``clipbeam.transforms`` and ``clipbeam.pipeline``.

A user's own ``model.py``, ``pipeline.py`` or ``transforms/`` sits beside their script, on
``sys.path`` before site-packages; clipbeam must never import them, nor be importable under a
second, bare name in one process (two copies of a module hold two copies of its classes).
"""

from __future__ import annotations

import json
import re
import tarfile
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.datasets import build_dataset
from tests.processes import run_python

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "transforms", "pipeline")
BARE_IMPORT = re.compile(r"^\s*(?:from|import)\s+(?:model|transforms|pipeline)(?:\.|\s|$)", re.M)


def test_no_source_file_imports_a_bare_package_name():
    offenders = []
    for folder in (*PACKAGES, "tests", "benchmarks", "templates"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == Path(__file__).resolve():
                continue  # the user's script written below imports its own bare modules
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if BARE_IMPORT.match(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_every_module_loads_under_one_name_only():
    # Run from the repository root, where a bare ``import model`` would succeed: the check is
    # that nothing asks for one.
    code = textwrap.dedent(
        f"""
        import collections, importlib, json, pkgutil, sys
        import clipbeam.model, clipbeam.transforms, clipbeam.pipeline
        for package in (clipbeam.model, clipbeam.transforms, clipbeam.pipeline):
            for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
                importlib.import_module(info.name)
        import clipbeam.model as m
        m.CLIPModel, m.ChineseCLIPModel, m.CLIPProcessor  # lazy exports resolve
        import templates.launcher, templates.plan, templates.write_metadata
        by_file = collections.defaultdict(list)
        root = {str(ROOT) + "/"!r}  # with the separator: a sibling folder /repo-venv is not in it
        for name, module in list(sys.modules.items()):
            file = getattr(module, "__file__", None)
            if file and file.startswith(root):
                by_file[file].append(name)
        print(json.dumps({{
            "bare": sorted(n for n in sys.modules
                           if n.split(".")[0] in ("model", "transforms", "pipeline")),
            "twice": {{f: n for f, n in by_file.items() if len(n) > 1}},
            "count": sum(1 for n in sys.modules if n.startswith("clipbeam.")),
        }}))
        """
    )
    done = run_python("-c", code, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["bare"] == []
    assert report["twice"] == {}
    files = [p for folder in PACKAGES for p in (ROOT / folder).rglob("*.py")]
    assert report["count"] == len(files)  # every module was really imported, once


def test_a_users_own_model_pipeline_and_transforms_do_not_shadow_clipbeam(tmp_path):
    data = build_dataset(tmp_path / "data", num_files=2, rows_per_file=6, row_group_size=3)
    project = tmp_path / "project"
    (project / "transforms").mkdir(parents=True)
    (project / "model.py").write_text("CLIPModel = 'the user model'\n")
    (project / "pipeline.py").write_text("def steps():\n    return ['read', 'score']\n")
    (project / "transforms" / "__init__.py").write_text("from .helpers import shout\n")
    (project / "transforms" / "helpers.py").write_text("def shout(s):\n    return s.upper()\n")
    output = tmp_path / "out"
    (project / "job.py").write_text(
        textwrap.dedent(
            f"""
            import sys
            from model import CLIPModel
            from pipeline import steps
            from transforms import shout
            from clipbeam.model import CLIPModel as ClipbeamModel
            from clipbeam.pipeline import run

            assert CLIPModel == "the user model" and steps() == ["read", "score"]
            assert shout("ok") == "OK" and ClipbeamModel.__module__.startswith("clipbeam.model")
            result = run([
                "score", "--input", {str(data.pattern)!r}, "--output", {str(output)!r},
                "--model", "demo-clip", "--dtype", "float32", "--id-column", "id",
                "--direct_running_mode=multi_processing", "--direct_num_workers=2",
            ])
            assert sys.modules["model"].__file__.startswith({str(project)!r})
            print("STATE", result.state)
            """
        )
    )
    done = run_python("job.py", cwd=project)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "STATE DONE" in done.stdout
    scores = pq.read_table(output / "scores").column("id").to_pylist()
    assert sorted(scores) == sorted(row.id for row in data.rows)


@pytest.mark.slow
def test_setup_file_packaging_carries_the_namespace(tmp_path):
    """``--setup_file pyproject.toml`` on Dataflow: Beam's stager builds an sdist of the repository
    with ``python -m build``; installed on a worker, it must import as clipbeam.* with its data."""
    from apache_beam.runners.portability.stager import Stager

    tarball = Stager._build_setup_package(str(ROOT / "pyproject.toml"), str(tmp_path))
    with tarfile.open(tarball) as archive:
        names = archive.getnames()
    assert any(n.endswith("model/pretrained/demo-clip/model.safetensors") for n in names)
    assert any(n.endswith("pipeline/report/page.html.j2") for n in names)
    target = tmp_path / "site"
    install = run_python(
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        "--target",
        str(target),
        tarball,
        cwd=tmp_path,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    assert not (target / "model").exists() and not (target / "pipeline").exists()
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(target)!r})
        import clipbeam.model, clipbeam.pipeline.cli, clipbeam.transforms
        from clipbeam.model.hub import resolve_source
        from clipbeam.pipeline.report import page
        assert clipbeam.model.__file__.startswith({str(target)!r}), clipbeam.model.__file__
        # The report's template (and the stylesheet it includes) ship in the package.
        template = page._environment().get_template(page.TEMPLATE)
        assert template.filename.startswith({str(target)!r}), template.filename
        assert "page.css" in page._environment().list_templates()
        print(resolve_source("demo-clip").location)
        """
    )
    done = run_python("-c", code, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().startswith(str(target))


def test_every_package_folder_is_listed_for_installation():
    """pyproject.toml lists packages by hand (the folders are mapped under clipbeam.*): a new
    subpackage left out of the list would be missing from wheels, sdists and Docker images."""
    import tomllib

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {folder: name for name, folder in setuptools["package-dir"].items()}
    found = set()
    for top in PACKAGES:
        for init in (ROOT / top).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT).as_posix()
            top_folder, _, rest = relative.partition("/")
            found.add(".".join([folders[top_folder], *filter(None, rest.split("/"))]))
    assert found == set(setuptools["packages"])
