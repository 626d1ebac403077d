"""The one grammar of the names Warden writes into other programs' languages.

A service name, a backend name and a frontend (``host`` or ``host/path``) reach Redis
keys, Traefik rules and keys, HAProxy runtime-API commands, logs, metrics and alerts.
Each is checked here once, wherever it comes from (a file, S3, SSM, a container's
labels), so a name that passed cannot become syntax in any of them; and each writer
encodes what it writes by construction (:func:`frontend_parts` for a Traefik rule,
``handlers.haproxy.argument`` for a runtime-API command), so a future source that
forgot to check cannot reopen it.
"""

from __future__ import annotations

import re
from typing import Optional

#: a service or backend name: it reaches Redis keys, Traefik's key tree, HAProxy's
#: commands, logs, metrics and alerts, where a chat format would read ``<!channel>``,
#: ``<url|text>`` or ``[text](url)`` as a mention or a link
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
NAME_RULE = "must be a name of 1 to 128 letters, digits, '.', '_', ':' or '-'"

#: a host name: dot-separated labels of letters, digits and inner ``-``, an optional
#: ``:port``
HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
                  r"(?::[0-9]{1,5})?")
#: a path: URL path characters (RFC 3986's unreserved ones, ``%XX``, and ``! $ + , = :
#: @ /``), none that a Traefik rule, an HAProxy command or a shell pattern reads as
#: syntax: no quote, backtick, parenthesis, ``|``, ``&``, ``;``, ``*``, ``?``, ``[``,
#: ``]``, space or control character
PATH = re.compile(r"/(?:[A-Za-z0-9._~!$+,=:@/-]|%[0-9A-Fa-f]{2})*")
FRONTEND_RULE = ("must be a host name (letters, digits, '-' and '.', an optional :port), then an "
                 "optional /path/ of letters, digits and - . _ ~ ! $ + , = : @ / %XX (no quote, "
                 "backtick, parenthesis, |, &, ;, *, ?, space or control character, and no "
                 "'.' or '..' part)")


class UnsafeName(ValueError):
    """A name or frontend a writer refuses: it does not follow the grammar here."""


def name_problem(value: str) -> Optional[str]:
    """Why ``value`` is no service or backend name, or None."""
    return None if NAME.fullmatch(value) else f"{value!r} {NAME_RULE}"


def frontend_parts(frontend: str) -> tuple[str, str]:
    """``host`` or ``host/path`` as its host and its path (``""`` for none), or
    :class:`UnsafeName` when it does not follow the frontend grammar."""
    slash = frontend.find("/")
    host, path = (frontend, "") if slash < 0 else (frontend[:slash], frontend[slash:])
    if not HOST.fullmatch(host) or (path and not PATH.fullmatch(path)) \
            or {".", ".."} & set(path.split("/")):
        raise UnsafeName(f"frontend {frontend!r} {FRONTEND_RULE}")
    return host, path


def frontend_problem(frontend: str) -> Optional[str]:
    """Why ``frontend`` breaks the frontend grammar, or None."""
    if "://" in frontend:
        return f"frontend {frontend!r} must be host or host/path/ (no scheme)"
    try:
        frontend_parts(frontend)
    except UnsafeName:
        return f"{frontend!r} {FRONTEND_RULE}"
    return None
