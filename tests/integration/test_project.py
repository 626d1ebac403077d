"""What the project ships beside the code: the distribution's name and version, its
licence and its changelog."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import metadata, version

from conftest import ROOT

import warden


def test_the_package_and_the_command_give_one_version():
    assert version("redx-warden") == warden.__version__
    result = subprocess.run([sys.executable, "-m", "warden", "--version"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0
    assert result.stdout.strip() == f"warden {warden.__version__}"


def test_the_licence_the_package_declares_is_the_one_it_ships():
    assert metadata("redx-warden")["License"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


def test_the_changelog_names_the_current_version():
    text = (ROOT / "CHANGELOG.md").read_text()
    assert f"## {warden.__version__}" in text
