"""Secret references, Redis addresses and Sentinel entries as the config reads them,
and a config's repr that shows no secret."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from warden.config import RedisAddress, load_config, parse_redis_address, parse_sentinels, resolve_secret


def test_a_secret_comes_from_a_file_or_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "pw").write_text("s3cret\n\n")
    assert resolve_secret({"file": "pw"}, str(tmp_path)) == ("s3cret\n", None), "one trailing newline dropped"
    assert resolve_secret({"file": str(tmp_path / "pw")}, "/elsewhere")[0] == "s3cret\n"
    monkeypatch.setenv("TEST_PW", "from-env")
    assert resolve_secret({"env": "TEST_PW"}, "") == ("from-env", None)
    assert resolve_secret("inline", "") == ("inline", None)
    monkeypatch.setenv("TEST_EMPTY", "")
    (tmp_path / "empty").write_text("\n")
    for reference, why in (({"env": "TEST_UNSET_X"}, "environment variable TEST_UNSET_X is not set"),
                           ({"env": "TEST_EMPTY"}, "environment variable TEST_EMPTY is empty"),
                           ({"file": "empty"}, f"secret file {tmp_path}/empty is empty"),
                           ({"file": "none"}, f"cannot read secret file {tmp_path}/none: No such file"),
                           ({"file": "pw", "env": "X"}, 'must be the value, {"file"'),
                           ({"vault": "x"}, 'must be the value, {"file"')):
        value, problem = resolve_secret(reference, str(tmp_path))
        assert value is None and problem.startswith(why), (reference, problem)


def test_the_config_repr_shows_no_secret(tmp_path: Path):
    (tmp_path / "config.json").write_text(json.dumps({
        "serviceManagementRedisAddress": "redis://user:central-pw@10.0.0.1:6379",
        "nginxRedisAddress": "redis://:redx-pw@127.0.0.1:6379",
        "serviceManagementRedisPassword": "other-pw" * 0 or None,
        "controlSecret": ["control-secret-0123456789"],
        "alerts": {"webhookUrl": "https://hooks.example.com/T/B/hook-token", "template": "{\"k\": \"pd-key\"}",
                   "headers": {"Authorization": "Bearer header-token"}},
        "pluginToken": "plugin-secret"}).replace('"serviceManagementRedisPassword": null, ', ""))
    config, problems = load_config(str(tmp_path / "config.json"))
    assert config is not None, problems
    shown = repr(config)
    for secret in ("central-pw", "redx-pw", "control-secret", "hook-token", "pd-key", "header-token",
                   "plugin-secret"):
        assert secret not in shown, secret
    assert "10.0.0.1:6379/11" in shown and "'pluginToken': '<redacted>'" in shown
    assert config.extra["pluginToken"] == "plugin-secret", "plugins still read their keys"


def test_redis_addresses_and_sentinel_entries():
    assert parse_redis_address("10.0.0.1:6380", None, 11) == RedisAddress("redis://10.0.0.1:6380", 11)
    assert parse_redis_address("redis://h:1/3", None, 11).db == 3
    assert parse_redis_address("redis://h:1/3", 5, 11).db == 5
    found = parse_sentinels(["rediss://:pw@h1:26379?ssl_ca_certs=/ca.pem&ssl_check_hostname=true",
                             "rediss://:pw@h2:26379?ssl_check_hostname=TRUE&ssl_ca_certs=/ca.pem"])
    assert found.pairs == (("h1", 26379), ("h2", 26379)) and found.auth == ("", "pw")
    assert dict(found.tls) == {"ssl_ca_certs": "/ca.pem", "ssl_check_hostname": True}
    assert repr(RedisAddress("redis://u:pw@h:1", 0, username="u", password="pw2")) == "RedisAddress('h:1/0')"
    for entries in (["h"], ["h:0"], ["rediss://h:1?ssl_cert_reqs=maybe"], ["redis://h"], []):
        with pytest.raises(ValueError):
            parse_sentinels(entries)


def test_a_central_redis_older_than_7_0_is_refused_naming_both_versions():
    from warden.runtime.central import version_problem

    assert version_problem("7.0.15") == "" and version_problem("7.2.4") == "" and version_problem("8.0.0") == ""
    assert version_problem("6.2.14") == "is Redis 6.2.14; Warden needs 7.0 or later (see docs/redis-acl.md)"
    assert version_problem("x.y") == "reports version 'x.y', which Warden cannot read"


def test_the_health_check_asks_livez_where_the_metrics_are_served():
    from warden.runtime.health import livez_url

    assert livez_url("127.0.0.1:9723") == "http://127.0.0.1:9723/livez"
    assert livez_url("0.0.0.0:9723") == "http://127.0.0.1:9723/livez"
    assert livez_url("[::]:9723") == "http://[::1]:9723/livez"
    assert livez_url("[::1]:9723") == "http://[::1]:9723/livez"
