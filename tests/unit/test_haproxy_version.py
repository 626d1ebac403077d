"""The HAProxy handler reads HAProxy's version from ``show info``: one older than 2.4
cannot add servers at run time, and is named so instead of refusing every command."""

from warden.handlers.haproxy import too_old, version_of

INFO = "Name: HAProxy\nVersion: {}\nRelease_date: 2023/01/01\nPid: 4242\n"


def test_the_version_is_read_from_show_info():
    assert version_of(INFO.format("2.6.12-1+deb12u1")) == (2, 6)
    assert version_of(INFO.format("3.0-dev1")) == (3, 0)
    assert version_of("Pid: 1\n") is None


def test_an_haproxy_older_than_2_4_is_named_and_a_newer_one_is_not():
    error = too_old(INFO.format("2.2.9-2+deb11u5"), "/run/haproxy/admin.sock")
    assert error is not None
    assert str(error) == ("HAProxy 2.2 at /run/haproxy/admin.sock cannot add servers at run time "
                          "(add server came in 2.4); routes wait for a newer HAProxy")
    assert too_old(INFO.format("2.4.0"), "x") is None
    assert too_old(INFO.format("2.10.1"), "x") is None
    assert too_old("Pid: 1\n", "x") is None, "a version it cannot read is no reason to refuse"
