"""The log level and format: the command line wins, then the config's ``logLevel`` /
``logFormat`` (the file, or WARDEN_LOG_LEVEL / WARDEN_LOG_FORMAT over it), then
``info`` and ``text``; a SIGHUP applies the config's values again."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from warden.config import load_config
from warden.runtime.logs import JsonFormatter, LogSettings


@pytest.fixture
def settings():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield LogSettings()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_the_command_line_wins_and_the_config_fills_in_the_rest(settings):
    settings.start(None, "text", given={"level": "debug"})
    assert settings.use_config("error", "json") == ["level"]
    assert settings.current == {"level": "debug", "format": "json"}
    assert logging.getLogger().level == logging.DEBUG
    assert isinstance(logging.getLogger().handlers[0].formatter, JsonFormatter)
    # The config's values removed: the defaults, for what the command line left open.
    assert settings.use_config(None, None) == []
    assert settings.current == {"level": "debug", "format": "text"}


def test_the_config_sets_the_level_when_the_command_line_does_not(settings):
    settings.start(None, None, given={})
    settings.use_config("warning", None)
    assert logging.getLogger().level == logging.WARNING
    assert logging.getLogger("botocore").level == logging.WARNING


def test_a_mistyped_log_level_is_refused_naming_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("WARDEN_LOG_LEVEL", raising=False)
    (tmp_path / "config.json").write_text(json.dumps({"logLevel": "loud", "logFormat": "JSON"}))
    config, problems = load_config(str(tmp_path / "config.json"))
    assert [str(p) for p in problems if not p.warning] == [
        f'{tmp_path / "config.json"}: logLevel: must be "debug" or "info" or "warning" or "error", in any case']
    monkeypatch.setenv("WARDEN_LOG_LEVEL", "Warning")
    config, problems = load_config(str(tmp_path / "config.json"))
    assert config is not None and (config.log_level, config.log_format) == ("warning", "json")
