"""The django-rawws distribution: the wheel and the sdist that ``python -m build`` makes, and the wheel installed.

Both are built from a copy of the repository's files (what a commit of the
working tree would hold: ``git ls-files`` plus new files that ``.gitignore``
does not exclude), so nothing lying in the checkout (``build/``,
``*.egg-info``, caches) leaks into them and the build writes nothing into it.
``python -m build --no-isolation`` uses the setuptools of this environment (the
``test`` extra installs it): fast, and no download. It builds the sdist, then the
wheel from the unpacked sdist, so every check on the wheel also proves the sdist
complete.

The copy gets two probe files, one deep under ``static/`` and one under
``templates/``, so the package-data patterns are checked at any depth even
before the app has files there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from email.message import Message
from email.parser import Parser
from pathlib import Path, PurePosixPath

import pytest
from django.utils import autoreload
from packaging.requirements import Requirement

import django_rawws

REPOSITORY = Path(__file__).resolve().parents[1]
PACKAGE = "django_rawws"

PROBES = (
    "django_rawws/static/django_rawws/_packaging_probe/deep/probe.css",
    "django_rawws/templates/django_rawws/_packaging_probe/deep/probe.html",
)

# Generous bounds: they only matter when something is broken.
BUILD_TIMEOUT = 300.0
INSTALL_TIMEOUT = 600.0


# ------------------------------------------------------------------ helpers


def repository_files() -> list[str]:
    """The repository's files as a commit of the working tree would hold them: tracked or new, not ignored."""
    result = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPOSITORY,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"git ls-files failed: {result.stderr.decode(errors='replace')}"
    names = {name for name in result.stdout.decode().split("\0") if name}
    # A tracked file deleted in the working tree is listed, but is not there to copy.
    return sorted(name for name in names if (REPOSITORY / name).is_file())


def copy_repository(destination: Path) -> list[str]:
    """Copy :func:`repository_files` to ``destination``, as a fresh clone would have them; return their names."""
    files = repository_files()
    for name in files:
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPOSITORY / name, target)
    return files


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without what ties a child to this test run's interpreter or settings.

    Package index settings (``PIP_*``) stay, so that pip in a fresh virtual
    environment reaches the same index as here.
    """
    environ = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONHOME", "DJANGO_SETTINGS_MODULE", autoreload.DJANGO_AUTORELOAD_ENV):
        environ.pop(name, None)
    virtual_env = environ.pop("VIRTUAL_ENV", None)
    if virtual_env:
        # An activated environment's bin/ would shadow the python3 a fresh machine has.
        bin_dir = str(Path(virtual_env) / "bin")
        environ["PATH"] = os.pathsep.join(
            p for p in environ.get("PATH", "").split(os.pathsep) if p != bin_dir
        )
    environ.update(extra)
    return environ


def run(arguments: list[str | Path], *, timeout: float, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a command to completion; fail the test with its output if it fails."""
    result = subprocess.run(
        [str(a) for a in arguments], capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )
    assert result.returncode == 0, (
        f"{' '.join(map(str, arguments))} exited {result.returncode}\n"
        f"--- stdout\n{result.stdout}--- stderr\n{result.stderr}"
    )
    return result


def requirement_spec(requirement: Requirement) -> str:
    """``name[extras]specifier`` without the marker, as pyproject.toml writes it."""
    extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
    return f"{requirement.name}{extras}{requirement.specifier}"


@dataclass(frozen=True)
class Distribution:
    """The two artifacts of one build, read once."""

    wheel: Path
    sdist: Path
    # Left out of the repr, so that a failing assertion stays readable.
    source_files: tuple[str, ...] = field(repr=False)  # the copied repository files, probes included
    wheel_names: frozenset[str] = field(repr=False)
    sdist_names: frozenset[str] = field(repr=False)  # without the leading ``<name>-<version>/``
    metadata: Message = field(repr=False)  # the wheel's METADATA
    sdist_metadata: Message = field(repr=False)  # the sdist's PKG-INFO
    entry_points: str = field(repr=False)

    def requires(self) -> dict[str | None, set[str]]:
        """Requires-Dist grouped by extra (``None`` for run-time dependencies)."""
        extras = self.metadata.get_all("Provides-Extra") or []
        groups: dict[str | None, set[str]] = {None: set(), **{extra: set() for extra in extras}}
        for line in self.metadata.get_all("Requires-Dist") or []:
            requirement = Requirement(line)
            if requirement.marker is None:
                groups[None].add(requirement_spec(requirement))
                continue
            matching = [extra for extra in extras if requirement.marker.evaluate({"extra": extra})]
            assert matching, f"Requires-Dist {line!r} belongs to no declared extra"
            for extra in matching:
                groups[extra].add(requirement_spec(requirement))
        return groups


@pytest.fixture(scope="module")
def distribution(tmp_path_factory: pytest.TempPathFactory) -> Distribution:
    source = tmp_path_factory.mktemp("source")
    files = copy_repository(source)
    for probe in PROBES:
        (source / probe).parent.mkdir(parents=True, exist_ok=True)
        (source / probe).write_text("/* package-data probe */\n")
    out = tmp_path_factory.mktemp("dist")
    run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", out, source],
        timeout=BUILD_TIMEOUT,
        env=clean_environment(),
    )
    wheels = sorted(out.glob("*.whl"))
    sdists = sorted(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in out.iterdir())
    wheel, sdist = wheels[0], sdists[0]

    with zipfile.ZipFile(wheel) as archive:
        wheel_names = frozenset(archive.namelist())
        dist_info = f"{PACKAGE}-{django_rawws.__version__}.dist-info"
        metadata = Parser().parsestr(archive.read(f"{dist_info}/METADATA").decode())
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()

    with tarfile.open(sdist) as archive:
        root = f"{PACKAGE}-{django_rawws.__version__}/"
        members = [m for m in archive.getmembers() if m.isfile()]
        assert all(m.name.startswith(root) for m in members), [m.name for m in members]
        sdist_names = frozenset(m.name[len(root) :] for m in members)
        extracted = archive.extractfile(f"{root}PKG-INFO")
        assert extracted is not None
        sdist_metadata = Parser().parsestr(extracted.read().decode())

    return Distribution(
        source_files=(*files, *PROBES),
        wheel=wheel,
        sdist=sdist,
        wheel_names=wheel_names,
        sdist_names=sdist_names,
        metadata=metadata,
        sdist_metadata=sdist_metadata,
        entry_points=entry_points,
    )


def under(names: Iterable[str], folder: str) -> set[str]:
    return {name for name in names if name.startswith(folder.rstrip("/") + "/")}


def package_data(distribution: Distribution) -> set[str]:
    """The repository's files under the package's static/ and templates/ (probes included)."""
    names = distribution.source_files
    return under(names, f"{PACKAGE}/static") | under(names, f"{PACKAGE}/templates")


# ------------------------------------------------------------------ metadata


def test_build_makes_one_sdist_and_one_pure_python_wheel_named_after_the_version(
    distribution: Distribution,
) -> None:
    version = django_rawws.__version__
    assert distribution.wheel.name == f"{PACKAGE}-{version}-py3-none-any.whl"
    assert distribution.sdist.name == f"{PACKAGE}-{version}.tar.gz"


def test_metadata_names_the_distribution_and_takes_its_version_from_the_package(
    distribution: Distribution,
) -> None:
    for metadata in (distribution.metadata, distribution.sdist_metadata):
        assert metadata["Name"] == "django-rawws"
        # The one place the version is written: django_rawws.__version__.
        assert metadata["Version"] == django_rawws.__version__


def test_metadata_requires_python_3_10_or_later(distribution: Distribution) -> None:
    assert distribution.metadata["Requires-Python"] == ">=3.10"


def test_metadata_declares_the_bsd_license_as_an_spdx_expression(distribution: Distribution) -> None:
    assert distribution.metadata["License-Expression"] == "BSD-3-Clause"


def test_metadata_carries_the_readme_as_markdown(distribution: Distribution) -> None:
    assert distribution.metadata["Description-Content-Type"] == "text/markdown"
    assert distribution.metadata.get_payload().strip() == (REPOSITORY / "README.md").read_text().strip()


def test_django_4_2_is_the_only_run_time_dependency(distribution: Distribution) -> None:
    assert distribution.requires()[None] == {"Django>=4.2"}


def test_the_extras_are_redis_and_test_and_redis_adds_only_its_client(distribution: Distribution) -> None:
    assert set(distribution.metadata.get_all("Provides-Extra") or []) == {"redis", "test"}
    assert distribution.requires()["redis"] == {"redis>=5.0"}


def test_the_test_extra_installs_every_tool_the_suite_uses(distribution: Distribution) -> None:
    names = {Requirement(spec).name.lower() for spec in distribution.requires()["test"]}
    assert {
        "pytest",
        "pytest-django",
        "hypothesis",
        "websockets",
        "websocket-client",
        "redis",
        "psycopg",
        "trustme",
        # This module's build without isolation.
        "build",
        "setuptools",
    } <= names


def test_the_wheel_registers_the_pytest_plugin(distribution: Distribution) -> None:
    assert "[pytest11]\ndjango_rawws = django_rawws.testing\n" in distribution.entry_points


# ------------------------------------------------------------------ wheel contents


def test_wheel_ships_every_module_of_every_subpackage(distribution: Distribution) -> None:
    modules = {name for name in under(distribution.source_files, PACKAGE) if name.endswith(".py")}
    assert modules - distribution.wheel_names == set()
    for subpackage in ("protocol", "server", "groups", "management", "management/commands"):
        assert f"{PACKAGE}/{subpackage}/__init__.py" in distribution.wheel_names


def test_wheel_ships_the_py_typed_marker(distribution: Distribution) -> None:
    assert f"{PACKAGE}/py.typed" in distribution.wheel_names


def test_wheel_ships_every_static_file_and_template_at_any_depth(distribution: Distribution) -> None:
    data = package_data(distribution)
    assert set(PROBES) <= data
    assert data - distribution.wheel_names == set()


def test_wheel_ships_the_javascript_client_as_a_static_file(distribution: Distribution) -> None:
    static = under(distribution.wheel_names, f"{PACKAGE}/static")
    assert f"{PACKAGE}/static/django_rawws/rawws.js" in static, sorted(static)


def test_wheel_holds_only_the_package_and_its_metadata(distribution: Distribution) -> None:
    tops = {PurePosixPath(name).parts[0] for name in distribution.wheel_names}
    assert tops == {PACKAGE, f"{PACKAGE}-{django_rawws.__version__}.dist-info"}
    # Nothing of the repository's own: no tests, example, benchmarks or bytecode.
    assert not {name for name in distribution.wheel_names if "__pycache__" in name or name.endswith(".pyc")}


# ------------------------------------------------------------------ sdist contents


def test_sdist_holds_pyproject_readme_the_package_with_its_data_and_the_docs(
    distribution: Distribution,
) -> None:
    expected = {
        "pyproject.toml",
        "README.md",
        "MANIFEST.in",
        *under(distribution.source_files, PACKAGE),
        *under(distribution.source_files, "docs"),
    }
    assert expected - distribution.sdist_names == set()
    assert package_data(distribution) <= distribution.sdist_names


def test_sdist_leaves_the_suite_the_example_and_the_benchmarks_in_the_repository(
    distribution: Distribution,
) -> None:
    for folder in ("tests", "example_project", "bench", ".ci"):
        assert under(distribution.sdist_names, folder) == set(), folder


# ------------------------------------------------------------------ installed


PROJECT_SETTINGS = """\
SECRET_KEY = "packaging-test-only"
DEBUG = True
INSTALLED_APPS = ["django.contrib.staticfiles", "django_rawws"]
STATIC_URL = "static/"
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}]
RAWWS = {"URLCONF": "wsurls"}
"""

PROJECT_WSURLS = """\
from django.urls import path

from django_rawws.consumers import WebSocketConsumer


class EchoConsumer(WebSocketConsumer):
    def receive(self, text=None, bytes=None):
        self.send(text=text, bytes=bytes)


urlpatterns = [path("ws/echo/", EchoConsumer.as_consumer())]
"""

# Run by the fresh environment's python: where Django finds the app, its data and its command.
PROJECT_PROBE = """\
import json
import sys

import django

django.setup()

import django_rawws
from django.contrib.staticfiles import finders
from django.core.management import get_commands
from django.template.loader import get_template

wanted = json.loads(sys.argv[1])
print(json.dumps({
    "package": django_rawws.__file__,
    "version": django_rawws.__version__,
    "static": {name: finders.find(name) for name in wanted["static"]},
    "templates": {name: get_template(name).origin.name for name in wanted["templates"]},
    "runws": get_commands().get("runws"),
}))
"""


def relative_to_folder(names: Iterable[str], folder: str) -> list[str]:
    return sorted(name[len(folder) + 1 :] for name in under(names, folder))


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_virtual_environment_and_serves_its_app_from_there(
    distribution: Distribution, tmp_path: Path
) -> None:
    """A plain venv (no system site-packages) and ``pip install <wheel>``: Django comes from the index."""
    venv = tmp_path / "venv"
    environ = clean_environment()
    run([sys.executable, "-m", "venv", venv], timeout=INSTALL_TIMEOUT, env=environ)
    python = venv / "bin" / "python"
    run([python, "-m", "pip", "install", "-q", distribution.wheel], timeout=INSTALL_TIMEOUT, env=environ)

    project = tmp_path / "project"
    project.mkdir()
    (project / "settings.py").write_text(PROJECT_SETTINGS)
    (project / "wsurls.py").write_text(PROJECT_WSURLS)
    (project / "probe.py").write_text(PROJECT_PROBE)
    project_environ = clean_environment(DJANGO_SETTINGS_MODULE="settings", PYTHONPATH=str(project))

    check = run(
        [venv / "bin" / "django-admin", "check", "--fail-level", "WARNING"],
        timeout=INSTALL_TIMEOUT,
        cwd=project,
        env=project_environ,
    )
    assert "System check identified no issues" in check.stdout

    names = distribution.source_files
    wanted: Mapping[str, list[str]] = {
        "static": relative_to_folder(names, f"{PACKAGE}/static"),
        "templates": relative_to_folder(names, f"{PACKAGE}/templates"),
    }
    probe = run(
        [python, "probe.py", json.dumps(wanted)], timeout=INSTALL_TIMEOUT, cwd=project, env=project_environ
    )
    found = json.loads(probe.stdout)

    installed = Path(found["package"]).resolve()
    assert installed.is_relative_to(venv.resolve()), installed
    assert found["version"] == django_rawws.__version__
    assert found["runws"] == "django_rawws"
    package_dir = installed.parent
    for kind in ("static", "templates"):
        assert set(found[kind]) == set(wanted[kind])
        for name, path in found[kind].items():
            assert path is not None, f"{kind} {name} not found in the installed package"
            assert Path(path).resolve() == package_dir / kind / name
