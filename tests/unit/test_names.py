"""The one grammar of names and frontends, and the writers that encode by construction:
no name that passed can become Traefik rule syntax or an HAProxy command, and a writer
refuses what did not pass."""

from __future__ import annotations

import pytest

from warden.handlers.haproxy import RuntimeApiError, argument
from warden.handlers.traefik import rule
from warden.names import UnsafeName, frontend_problem, name_problem
from warden.services import parse_document
from warden.jsonfile import loads

HOSTILE_PATHS = ("/x`)||Host(`pay.example.com", "/x;show", "/a b", "/a|b", "/a&b", "/(a)", "/a'b", '/a"b',
                 "/a*", "/a?b", "/a\tb", "/a\x00", "/x/../y", "/%zz")


def test_hostile_paths_are_refused_naming_the_rule():
    for path in HOSTILE_PATHS:
        problem = frontend_problem("shop.example.com" + path)
        assert problem and "no quote, backtick, parenthesis" in problem, path


def test_ordinary_frontends_pass():
    for frontend in ("web.example.com", "web.example.com/", "web.example.com/api/v1/", "a.b:8080/x-y_z.~!$+,=:@/%41"):
        assert frontend_problem(frontend) is None, frontend


def test_names_follow_one_grammar():
    assert name_problem("image-server.v2:blue_1") is None
    for name in ("", "a b", "a;b", "<!channel>", "a/b", "a`b", "x" * 129):
        assert name_problem(name), name


def test_a_file_s3_or_ssm_document_is_held_to_the_same_grammar():
    services, problems = parse_document(loads(
        '[{"name": "a", "port": 80, "loadBalancerUrl": "a.example.com", "site": "/x;clear map m"},'
        ' {"name": "b c", "port": 80}, {"name": "d", "port": 80, "backendName": "x`y"},'
        ' {"name": "e", "port": 80, "loadBalancerUrl": "e.example.com`)||Host(`pay.example.com"}]'), "s.json")
    assert services is None
    fields = sorted(p.field for p in problems)
    assert fields == ["[0].site", "[1].name", "[2].backendName", "[3].loadBalancerUrl"]


def test_the_traefik_rule_is_built_from_checked_parts_only():
    assert rule("Shop.example.com/api/") == "Host(`shop.example.com`) && PathPrefix(`/api/`)"
    assert rule("shop.example.com/") == "Host(`shop.example.com`)"
    with pytest.raises(UnsafeName):
        rule("shop.example.com/x`)||Host(`pay.example.com")


def test_an_haproxy_argument_cannot_hold_a_separator():
    assert argument("shop.example.com/api/") == "shop.example.com/api/"
    for text in ("x;show", "a b", "a\nb", "a\\b", "a'b", "a#b", ""):
        with pytest.raises(RuntimeApiError):
            argument(text)
