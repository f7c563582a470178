"""The distributions users install: built offline from the repository, they carry the LICENSE, the page, the
entry points and the metadata PyPI shows; the wheel installed into a clean venv beside Airflow is a provider."""

from __future__ import annotations

import configparser
import email.parser
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from kapture_provider import __version__, get_provider_info

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PROJECT_URLS = {"Homepage", "Documentation", "Source", "Changelog", "Issues"}


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist and the wheel, built as ``make dist`` builds them, from a copy of the sources."""
    tmp_path = tmp_path_factory.mktemp("dist")
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info next to the sources
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(
        REPO / "kapture_provider", source / "kapture_provider", ignore=shutil.ignore_patterns("__pycache__")
    )
    built = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp_path / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return tmp_path / "dist"


@pytest.mark.unit
def test_wheel_ships_the_license_the_ui_page_the_entry_points_and_the_metadata(dist: Path) -> None:
    (wheel,) = dist.glob("airflow_provider_kapture-*.whl")
    (sdist,) = dist.glob("airflow_provider_kapture-*.tar.gz")
    assert wheel.name.startswith(f"airflow_provider_kapture-{__version__}-")
    assert sdist.name == f"airflow_provider_kapture-{__version__}.tar.gz"

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (dist_info,) = {name.split("/")[0] for name in names if name.split("/")[0].endswith(".dist-info")}
        license_text = archive.read(f"{dist_info}/licenses/LICENSE").decode()
        metadata = email.parser.Parser().parsestr(archive.read(f"{dist_info}/METADATA").decode())
        entry_points = configparser.ConfigParser()
        entry_points.read_string(archive.read(f"{dist_info}/entry_points.txt").decode())

    assert license_text == (REPO / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata["Version"] == __version__ == get_provider_info()["versions"][0]
    assert {"Framework :: Apache Airflow", "Framework :: Apache Airflow :: Provider"} <= set(
        metadata.get_all("Classifier")
    )
    assert {url.split(",")[0] for url in metadata.get_all("Project-URL")} == PROJECT_URLS
    assert metadata["Description-Content-Type"] == "text/markdown"
    assert "kapture_provider/ui/templates/syncs.html" in names
    assert entry_points["airflow.plugins"]["kapture"] == "kapture_provider.ui.plugin:KapturePlugin"
    assert entry_points["apache_airflow_provider"]["provider_info"] == "kapture_provider:get_provider_info"
    with tarfile.open(sdist) as archive:
        assert f"airflow_provider_kapture-{__version__}/LICENSE" in archive.getnames()


@pytest.mark.system
def test_the_wheel_installed_beside_airflow_in_a_clean_venv_is_listed_as_a_provider(dist: Path, tmp_path: Path) -> None:
    """What a user gets: a fresh venv, the wheel and its dependencies (pinned by requirements.lock, from uv's
    cache or the package registry), then ``airflow providers list`` in a throw-away Airflow home."""
    (wheel,) = dist.glob("airflow_provider_kapture-*.whl")
    venv = tmp_path / "venv"
    uv = str(BIN / "uv")
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True, timeout=120)
    installed = subprocess.run(
        [uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), str(wheel),
         "--constraint", str(REPO / "requirements.lock")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-3000:]
    home = tmp_path / "airflow"
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW")}
    env.update(AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False")
    listed = subprocess.run(
        [str(venv / "bin" / "airflow"), "providers", "list", "--output", "json"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stdout[-3000:] + listed.stderr[-3000:]
    providers = {p["package_name"]: p for p in json.loads(listed.stdout[listed.stdout.index("[") :])}
    assert providers["airflow-provider-kapture"]["version"] == __version__
