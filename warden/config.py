"""Warden's configuration: one frozen object, built once at start-up and passed down.

The file is JSON, a superset of the Go Warden's ``config.json``; keys match in any
casing. Relative paths are relative to the config file's folder.
"""

from __future__ import annotations

import json
import os
import re
import string
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional
from urllib.parse import parse_qs, urlparse, urlunparse

from warden import jsonfile
from warden.errors import ConfigError
from warden.jsonfile import KeyedObject, Problem, in_range, is_int, shown, unknown_key


@dataclass(frozen=True)
class RedisAddress:
    """Where a Redis is: a ``redis://`` or ``rediss://`` URL and the database to use, or
    the name of a primary that Sentinels (``sentinels``, ``(host, port)`` pairs) know.
    ``username``/``password`` log in to the primary (a URL may carry its own);
    ``sentinel_auth`` (username, password) to the Sentinels; ``sentinel_tls``, when not
    None, speaks TLS to the Sentinels and the primary they name, with those redis-py
    options (``ssl_ca_certs`` and the like). Its repr holds no secret."""

    url: str
    db: int
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str = ""
    username: str = ""
    password: str = ""
    sentinel_auth: tuple[str, str] = ("", "")
    sentinel_tls: Optional[tuple[tuple[str, Any], ...]] = None

    def __repr__(self) -> str:
        return f"RedisAddress({self.display!r})"

    @property
    def display(self) -> str:
        """The address without any password, for logs and errors."""
        if self.sentinels:
            return (f"primary {self.master!r} of Sentinels "
                    f"{','.join(f'{h}:{p}' for h, p in self.sentinels)}/{self.db}")
        parsed = urlparse(self.url)
        host = parsed.hostname or "127.0.0.1"
        return f"{host}:{parsed.port or 6379}/{self.db}"

    def _login(self) -> dict:
        """The primary's credentials, as redis-py takes them (none: the URL's own)."""
        login = {}
        if self.username:
            login["username"] = self.username
        if self.password:
            login["password"] = self.password
        return login

    def client(self, single: bool = False, **options: Any) -> Any:
        """A redis-py client for this address; ``options`` go to the connection pool.

        ``single``: the client holds at most one connection, and a thread waits (up
        to its socket timeout) while another uses it; every thread of a process can
        share it. Through Sentinels the client finds the current primary on each
        connect, so it follows a failover."""
        import redis

        options = {**self._login(), **options}
        if self.sentinels:
            from redis.sentinel import Sentinel, SentinelConnectionPoolProxy, SentinelManagedConnection

            timeout = options.get("socket_connect_timeout") or options.get("socket_timeout") or 2
            own = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
            user, password = self.sentinel_auth
            if user:
                own["username"] = user
            if password:
                own["password"] = password
            connection_class: Any = SentinelManagedConnection
            if self.sentinel_tls is not None:
                from redis.sentinel import SentinelManagedSSLConnection

                tls = dict(self.sentinel_tls)
                own.update(ssl=True, **tls)
                options.update(tls)
                connection_class = SentinelManagedSSLConnection
            sentinel = Sentinel(list(self.sentinels), sentinel_kwargs=own)
            if not single:
                return sentinel.master_for(self.master, db=self.db, connection_class=connection_class,
                                           **options)
            pool = redis.BlockingConnectionPool(connection_class=connection_class, max_connections=1,
                                                timeout=timeout, db=self.db, **options)
            # What redis-py's SentinelConnectionPool wires up, on a pool of one.
            pool.connection_kwargs["connection_pool"] = SentinelConnectionPoolProxy(
                pool, is_master=True, check_connection=False, service_name=self.master,
                sentinel_manager=sentinel)
            return redis.Redis(connection_pool=pool)
        parsed = urlparse(self.url)
        url = urlunparse(parsed._replace(path=f"/{self.db}"))
        if not single:
            return redis.Redis.from_url(url, **options)
        timeout = options.get("socket_timeout") or 2
        return redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(
            url, max_connections=1, timeout=timeout, **options))


@dataclass(frozen=True)
class SentinelSet:
    """``serviceManagementRedisSentinels`` parsed: the ``(host, port)`` pairs, and the
    login and TLS options every entry shares (entries may be
    ``redis://user:pass@host:port`` or ``rediss://...?ssl_ca_certs=/path`` URLs)."""

    pairs: tuple[tuple[str, int], ...]
    auth: tuple[str, str] = ("", "")
    tls: Optional[tuple[tuple[str, Any], ...]] = None


#: the TLS options a ``rediss://`` Sentinel entry may give in its query, as redis-py
#: names them, and how each is read
TLS_OPTIONS: dict[str, Callable[[str], Any]] = {
    "ssl_ca_certs": str, "ssl_certfile": str, "ssl_keyfile": str,
    "ssl_cert_reqs": lambda v: {"required": "required", "optional": "optional", "none": "none"}[v.lower()],
    "ssl_check_hostname": lambda v: {"true": True, "false": False}[v.lower()],
}


def _tls_options(query: str, shown_item: str) -> tuple[tuple[str, Any], ...]:
    """The TLS options of a Sentinel URL's query; ValueError names a wrong one."""
    found = []
    for name, values in sorted(parse_qs(query, keep_blank_values=True).items()):
        reader = TLS_OPTIONS.get(name)
        if reader is None:
            raise ValueError(f"{shown_item!r}: unknown option {name!r} (known: {', '.join(TLS_OPTIONS)})")
        try:
            found.append((name, reader(values[-1])))
        except KeyError:
            raise ValueError(f"{shown_item!r}: {name}={values[-1]!r} is not a value it takes") from None
    return tuple(found)


def parse_sentinels(value: Any) -> SentinelSet:
    """``["host:26379", ...]`` or URLs; ValueError names the problem."""
    if not isinstance(value, list) or not value:
        raise ValueError('must be a list of Sentinel addresses such as ["10.0.0.5:26379"]')
    pairs, logins = [], set()
    for item in value:
        if isinstance(item, str) and "://" in item:
            parsed = urlparse(item)
            try:
                port = parsed.port
            except ValueError:
                port = None
            if parsed.scheme not in ("redis", "rediss") or not parsed.hostname or port is None:
                raise ValueError(f"{_no_password(item)!r} is not host:port or a redis:// or rediss:// "
                                 "URL with a host and a port")
            if parsed.query and parsed.scheme != "rediss":
                raise ValueError(f"{_no_password(item)!r}: options are for rediss:// (TLS) only")
            tls = _tls_options(parsed.query, _no_password(item)) if parsed.scheme == "rediss" else None
            pairs.append((parsed.hostname, port))
            logins.add((parsed.username or "", parsed.password or "", tls))
            continue
        host, sep, port_text = item.rpartition(":") if isinstance(item, str) else ("", "", "")
        if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"{item!r} is not host:port")
        pairs.append((host.strip("[]"), int(port_text)))
        logins.add(("", "", None))
    if len(logins) > 1:
        raise ValueError("every Sentinel entry must carry the same user, password, scheme and "
                         "options (Warden speaks to all Sentinels alike)")
    user, password, tls = logins.pop()
    return SentinelSet(tuple(pairs), (user, password), tls)


def _no_password(url: str) -> str:
    """``url`` with any password replaced by ``***``, for messages."""
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@", 1)
    return urlunparse(parsed._replace(netloc=netloc))


def parse_redis_address(text: str, db: Optional[int], default_db: int) -> RedisAddress:
    """``host:port`` or a URL; the URL's ``/db`` holds unless ``db`` is given."""
    if "://" in text:
        parsed = urlparse(text)
        if parsed.scheme not in ("redis", "rediss"):
            raise ValueError("must be host:port or a redis:// or rediss:// URL")
        try:
            parsed.port
        except ValueError:
            raise ValueError("has a port that is not a number") from None
        url_db = parsed.path.strip("/")
        if url_db and not url_db.isdigit():
            raise ValueError(f"has a database {url_db!r} that is not a number")
        chosen = db if db is not None else (int(url_db) if url_db else default_db)
        return RedisAddress(text, chosen)
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("must be host:port or a redis:// or rediss:// URL")
    return RedisAddress(f"redis://{host}:{port}", db if db is not None else default_db)


@dataclass(frozen=True)
class Config:
    """Everything Warden was configured with. Built by :func:`load_config`."""

    #: the config file this came from
    path: str
    #: the config file's path as the user gave it (for messages)
    display_path: str
    #: central Redis: leader election, heartbeats and control channels
    service_management_redis: RedisAddress = RedisAddress("redis://127.0.0.1:6379", 11)
    #: this host's Redx Redis, which holds the routes
    nginx_redis: RedisAddress = RedisAddress("redis://127.0.0.1:6379", 0)
    #: service descriptions: a file, or a folder of ``*.json`` files (absolute path)
    service_description_path: str = "services.json"
    #: the same path as the user would see it, for messages
    service_description_display: str = "services.json"
    #: period of the Registrar's safety-net sweep, in seconds
    registrar_sleep_time_seconds: float = 60.0
    #: services declared by container labels: ``on`` (the Registrar reads them) or ``off``
    container_labels: bool = True
    #: the prefix of those labels
    label_prefix: str = "warden."
    #: shell-style patterns of the frontends (``host/path``) a container may define by
    #: labels; none: containers define no service
    label_frontends: tuple[str, ...] = ()
    #: shell-style patterns of the load-balancer names and target-group ARNs a
    #: label-defined service may enrol this host in; none: labels name none
    label_load_balancers: tuple[str, ...] = ()
    #: a container whose readiness probe has had no answer for this long is reported
    #: (logged once, counted); it stays unrouted and its probe goes on
    readiness_report_seconds: float = 30.0
    #: period of the Manager's safety-net check and scaling pass, in seconds
    manager_sleep_time_seconds: float = 30.0
    #: this host's EC2 instance id (else from the environment or instance metadata)
    instance_id: Optional[str] = None
    #: this host's availability zone
    availability_zone: Optional[str] = None
    #: this host's AWS region
    region: Optional[str] = None
    #: instance metadata answered when the identity was resolved: this is an EC2
    #: instance, and its own interruption notices are worth polling
    on_ec2: bool = False
    #: the address that routes of published-port services point at
    host_address: str = "127.0.0.1"
    #: the ECS cluster of services that name none
    ecs_cluster: str = "default"
    #: leader heartbeat period, in seconds
    heartbeat_interval_seconds: float = 1.0
    #: a Warden leader whose heartbeat is older than this is dead
    lease_seconds: float = 5.0
    #: the same for a leader record written by the Perl/Go tools
    legacy_max_heartbeat_age_seconds: float = 300.0
    #: how long an election stays open for entries
    guard_time_seconds: float = 1.0
    #: lifetime of a candidate entry
    candidate_expiry_seconds: float = 30.0
    #: ``ec2`` (DescribeAvailabilityZones) or ``none`` (every zone is active)
    zone_check: str = "ec2"
    #: handlers to enable, by entry-point name
    handlers: tuple[str, ...] = ("redx", "elb", "ecs")
    #: ``debug``, ``info``, ``warning`` or ``error``; None: ``--log-level``'s default
    log_level: Optional[str] = None
    #: ``text`` or ``json``; None: ``--log-format``'s default
    log_format: Optional[str] = None
    #: alert settings (``webhookUrl``, ``events``), or None
    alerts: Optional[dict] = None
    #: the haproxy handler's settings (``runtimeApi``, ``map``), or None
    haproxy: Optional[dict] = None
    #: the traefik handler's settings (``redisAddress``, ``rootKey``, ``entryPoints``), or None
    traefik: Optional[dict] = None
    #: seconds between reads of an ``s3://`` or ``ssm:`` service source
    service_source_poll_seconds: float = 30.0
    #: leave the load balancers at a spot rebalance recommendation for this host
    rebalance_drain: bool = False
    #: and join them again after this many seconds, if no interruption came
    rebalance_drain_seconds: float = 600.0
    #: ``host:port`` for Prometheus ``/metrics`` and ``/healthz``, or None
    metrics_address: Optional[str] = None
    #: an SQS queue fed by EventBridge rules, or None
    aws_events_queue_url: Optional[str] = None
    #: HMAC keys for control messages, the signing one first (every one verifies, so
    #: a secret rotates without dropping messages); empty: messages are not signed
    control_secrets: tuple[str, ...] = ()
    #: replicas of the central Redis that must have acknowledged a leader's writes
    #: (``WAIT``) before it acts, and at every heartbeat while it acts: 1 under
    #: Sentinel, else 0 (then a claim is confirmed once, when the primary has replicas)
    min_replicas_to_act: int = 0
    #: one deadline for the whole shutdown, in seconds: leadership is handed back
    #: first, and what has not stopped by then is named and abandoned
    stop_timeout_seconds: float = 20.0
    #: keys the file held that Warden does not know (kept for plugins)
    extra: dict = field(default_factory=dict)
    #: config key -> where its value came from (``WARDEN_...`` or the file); keys not
    #: listed have their default
    sources: dict = field(default_factory=dict, compare=False)

    def __repr__(self) -> str:
        """Every setting but the secrets (a plugin that logs its config leaks none):
        the Redis addresses as their ``display``, the control secrets, the alert
        webhook, template and header values, and the unknown keys' values redacted."""
        shown_fields = []
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if name == "control_secrets":
                value = tuple(REDACTED for _ in value)
            elif name == "alerts" and value is not None:
                value = redacted_alerts(value)
            elif name == "extra":
                value = {key: REDACTED for key in value}
            shown_fields.append(f"{name}={value!r}")
        return f"Config({', '.join(shown_fields)})"


def _str(value: Any) -> Optional[str]:
    return None if isinstance(value, str) else "must be a string"


def _service_source(value: Any) -> Optional[str]:
    if not isinstance(value, str) or not value:
        return "must be a file or folder, s3://bucket/key, s3://bucket/prefix/ or ssm:/path/prefix"
    if value.startswith("s3://"):
        bucket, _, key = value[5:].partition("/")
        if not bucket or not key:
            return f"must be s3://bucket/key or s3://bucket/prefix/, not {value!r}"
    elif value.startswith("ssm:") and not value.startswith("ssm:/"):
        return f"must be ssm:/path/prefix (a parameter path starts with /), not {value!r}"
    return None


def _seconds(low: float, high: float) -> Callable[[Any], Optional[str]]:
    """A check for a number of seconds from ``low`` to ``high``: a period of 0 or NaN
    spins a loop, one of Infinity overflows a wait."""
    def check(value: Any) -> Optional[str]:
        if in_range(value, low, high):
            return None
        return f"must be a number of seconds from {low:g} to {high:g}, not {shown(value)}"
    return check


#: a day: the longest period, lifetime or age any setting may take
DAY = 86400


def _enum(value: Any) -> Any:
    """An enum value as Warden compares it: keys match in any case, and so do these."""
    return value.lower() if isinstance(value, str) else value


def _boolean(value: Any) -> Optional[str]:
    return None if isinstance(value, bool) else "must be true or false"


def _on_off(value: Any) -> Optional[str]:
    return None if _enum(value) in ("on", "off") else 'must be "on" or "off"'


def _label_prefix(value: Any) -> Optional[str]:
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        return "must be a label prefix such as \"warden.\" (no spaces)"
    return None


def _patterns(value: Any) -> Optional[str]:
    if not isinstance(value, list) or not all(
            isinstance(v, str) and v and not any(c.isspace() for c in v) for v in value):
        return 'must be a list of shell-style patterns such as "*.apps.example.com" (no spaces)'
    return None


def _db(value: Any) -> Optional[str]:
    if not is_int(value) or value < 0:
        return "must be a database number (0 or more)"
    return None


def _replicas(value: Any) -> Optional[str]:
    if not is_int(value) or not 0 <= value <= 16:
        return f"must be a whole number of replicas from 0 to 16, not {shown(value)}"
    return None


def _sentinels(value: Any) -> Optional[str]:
    try:
        parse_sentinels(value)
    except ValueError as error:
        return str(error)
    return None


def _master_name(value: Any) -> Optional[str]:
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        return "must be the name the Sentinels know the primary by (no spaces)"
    return None


def _handlers(value: Any) -> Optional[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        return "must be a list of handler names"
    return None


def _one_of(*allowed: str) -> Callable[[Any], Optional[str]]:
    def check(value: Any) -> Optional[str]:
        if _enum(value) not in allowed:
            return "must be " + " or ".join(f'"{a}"' for a in allowed) + ", in any case"
        return None
    return check


def _zone_check(value: Any) -> Optional[str]:
    if _enum(value) not in ("ec2", "none"):
        return 'must be "ec2" or "none"'
    return None


def _object(value: Any) -> Optional[str]:
    return None if isinstance(value, dict) else "must be an object"


def _settings_object(value: Any, strings: tuple[str, ...], lists: tuple[str, ...] = ()) -> bool:
    """Whether ``value`` is an object of no keys but these (in any case), each of
    ``strings`` it holds a non-empty string and each of ``lists`` a non-empty list of them."""
    if not isinstance(value, dict):
        return False
    settings = {str(k).lower(): v for k, v in value.items()}
    if set(settings) - {k.lower() for k in strings + lists}:
        return False

    def text(v: Any) -> bool:
        return isinstance(v, str) and bool(v)

    held = lambda keys: [settings[k.lower()] for k in keys if k.lower() in settings]  # noqa: E731
    return (all(text(v) for v in held(strings))
            and all(isinstance(v, list) and v and all(text(p) for p in v) for v in held(lists)))


def _traefik(value: Any) -> Optional[str]:
    if _settings_object(value, ("redisAddress", "rootKey"), ("entryPoints",)):
        return None
    return ('must be an object: {"redisAddress": "127.0.0.1:6379" or a redis:// URL, "rootKey": "traefik", '
            '"entryPoints": ["web"]}')


def _haproxy(value: Any) -> Optional[str]:
    if _settings_object(value, ("runtimeApi", "map")):
        return None
    return ('must be an object: {"runtimeApi": "/run/haproxy/admin.sock" or "host:port", '
            '"map": "/etc/haproxy/warden.map"}')


#: the shortest control secret, in bytes: HMAC-SHA256 keys shorter than this are guessable
MIN_SECRET_BYTES = 16


def parse_secrets(value: Any) -> tuple[tuple[str, ...], Optional[str]]:
    """``controlSecret``: one secret or a list (the first signs, every one verifies),
    each at least :data:`MIN_SECRET_BYTES` long; ``((), problem)`` when it is not."""
    secrets = [value] if isinstance(value, str) else value
    if not isinstance(secrets, list) or not secrets or not all(isinstance(s, str) for s in secrets):
        return (), "must be a secret string or a list of them (the first signs, every one verifies)"
    if any(len(s.encode()) < MIN_SECRET_BYTES for s in secrets):
        return (), f"each secret must be at least {MIN_SECRET_BYTES} bytes long"
    return tuple(secrets), None


def _secrets(value: Any) -> Optional[str]:
    return parse_secrets(value)[1]


def _optional_str(value: Any) -> Optional[str]:
    return None if value is None or isinstance(value, str) else "must be a string"


#: the warning for a config that leaves the central Redis at its default
UNSET_CENTRAL = ("not set, so the central Redis is this host's own 127.0.0.1:6379: a Manager here "
                 "elects itself and, with the ecs handler on, scales the cluster's services alone; "
                 "set the Redis every host of the cluster shares (or serviceManagementRedisSentinels)")


LISTEN_RULE = "must be host:port (an IPv6 host in brackets: [::1]:9723), the port 1 to 65535"


def parse_listen_address(text: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``; no host: 127.0.0.1) as ``(host, port)``;
    :class:`ValueError` with :data:`LISTEN_RULE` otherwise."""
    host, colon, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host:
            raise ValueError(LISTEN_RULE)
    elif ":" in host:
        raise ValueError(LISTEN_RULE)
    if not colon or not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535 or "[" in host:
        raise ValueError(LISTEN_RULE)
    return host or "127.0.0.1", int(port)


def _listen_address(value: Any) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str):
        return "must be a string: " + LISTEN_RULE
    try:
        parse_listen_address(value)
    except ValueError as error:
        return f"{error}, not {shown(value)}"
    return None


#: what an instance id may hold: it names Redis keys, channels and client names
INSTANCE_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
INSTANCE_ID_RULE = "must be 1 to 128 letters, digits, '-', '_', '.' or ':'"


def _instance_id(value: Any) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str) or not INSTANCE_ID.fullmatch(value):
        return INSTANCE_ID_RULE
    return None


#: each key as the README spells it -> (Config attribute, check returning a problem or None)
_SPELLED: dict[str, tuple[str, Callable[[Any], Optional[str]]]] = {
    "serviceManagementRedisAddress": ("service_management_redis", _str),
    "serviceManagementRedisDatabaseNumber": ("", _db),
    "serviceManagementRedisSentinels": ("", _sentinels),
    "serviceManagementRedisSentinelMaster": ("", _master_name),
    "serviceManagementRedisUsername": ("username", _str),
    "serviceManagementRedisPassword": ("password", _str),
    "nginxRedisAddress": ("nginx_redis", _str),
    "nginxRedisDatabaseNumber": ("", _db),
    "serviceDescriptionFilename": ("service_description_path", _service_source),
    "registrarSleepTimeSeconds": ("registrar_sleep_time_seconds", _seconds(0.1, DAY)),
    "managerSleepTimeSeconds": ("manager_sleep_time_seconds", _seconds(0.1, DAY)),
    "readinessReportSeconds": ("readiness_report_seconds", _seconds(0.1, DAY)),
    "containerLabels": ("container_labels", _on_off),
    "labelPrefix": ("label_prefix", _label_prefix),
    "labelFrontends": ("label_frontends", _patterns),
    "labelLoadBalancers": ("label_load_balancers", _patterns),
    "instanceId": ("instance_id", _instance_id),
    "availabilityZone": ("availability_zone", _optional_str),
    "region": ("region", _optional_str),
    "hostAddress": ("host_address", _str),
    "ecsCluster": ("ecs_cluster", _str),
    "heartbeatIntervalSeconds": ("heartbeat_interval_seconds", _seconds(0.05, 60)),
    "leaseSeconds": ("lease_seconds", _seconds(0.1, 3600)),
    "legacyMaxHeartbeatAgeSeconds": ("legacy_max_heartbeat_age_seconds", _seconds(1, DAY)),
    "guardTimeSeconds": ("guard_time_seconds", _seconds(0.05, 300)),
    "candidateExpirySeconds": ("candidate_expiry_seconds", _seconds(1, DAY)),
    "zoneCheck": ("zone_check", _zone_check),
    "logLevel": ("log_level", _one_of("debug", "info", "warning", "error")),
    "logFormat": ("log_format", _one_of("text", "json")),
    "handlers": ("handlers", _handlers),
    "alerts": ("alerts", _object),
    "haproxy": ("haproxy", _haproxy),
    "traefik": ("traefik", _traefik),
    "metricsAddress": ("metrics_address", _listen_address),
    "awsEventsQueueUrl": ("aws_events_queue_url", _optional_str),
    "controlSecret": ("control_secrets", _secrets),
    "minReplicasToAct": ("min_replicas_to_act", _replicas),
    "stopTimeoutSeconds": ("stop_timeout_seconds", _seconds(1, 3600)),
    "serviceSourcePollSeconds": ("service_source_poll_seconds", _seconds(1, DAY)),
    "rebalanceDrain": ("rebalance_drain", _boolean),
    "rebalanceDrainSeconds": ("rebalance_drain_seconds", _seconds(1, DAY)),
}
#: the same by lower-case key (keys match in any case)
_KEYS = {key.lower(): entry for key, entry in _SPELLED.items()}


#: the kinds of alert an operator may choose
ALERT_KINDS = ("leadership", "errors", "scaling", "drain", "routes")
#: the fields of an alert, which ``alerts.template`` may name (``$text``, ``${service}``)
ALERT_FIELDS = ("text", "kind", "event", "status", "action", "key", "severity", "instanceId",
                "service", "error", "reason", "epoch", "count", "seconds", "metric", "desired",
                "running", "started", "stopped", "change", "containerId", "receiver", "signal")
#: an alert as the config check renders a template with (every field set)
_SAMPLE_ALERT = {name: f'sample "{name}"' for name in ALERT_FIELDS}
_ALERT_KEYS = ("webhookUrl", "events", "template", "headers")


def render_alert(template: string.Template, body: dict) -> str:
    """``template`` over the alert ``body``: each field inserted escaped for a JSON
    string; a field the alert lacks is empty."""
    fields = {name: "" for name in ALERT_FIELDS}
    fields.update(body)
    return template.substitute({k: json.dumps("" if v is None else str(v))[1:-1] for k, v in fields.items()})


def _template_problem(value: Any) -> Optional[str]:
    if not isinstance(value, str) or not value:
        return "must be a string: the request body, with $fields"
    try:
        json.loads(render_alert(string.Template(value), _SAMPLE_ALERT))
    except KeyError as error:
        return f"names an unknown field ${error.args[0]} (fields: {', '.join(ALERT_FIELDS)})"
    except ValueError as error:
        return f"does not give a JSON body: {error}"
    return None


def _alert_problems(display: str, spelled: str, alerts: KeyedObject) -> list[Problem]:
    """``alerts``: ``webhookUrl`` an http(s) URL, ``events`` a list of known kinds."""
    problems = jsonfile.duplicate_problems(display, spelled + ".", alerts)
    for lower, key, value in alerts.items_spelled():
        field_name = f"{spelled}.{key}"
        if lower == "webhookurl":
            parsed = urlparse(value) if isinstance(value, str) else None
            if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc:
                problems.append(Problem(display, field_name, "must be an http:// or https:// URL"))
        elif lower == "events":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                problems.append(Problem(display, field_name,
                                        f"must be a list of event kinds ({', '.join(ALERT_KINDS)})"))
            else:
                for kind in value:
                    if _enum(kind) not in ALERT_KINDS:
                        problems.append(Problem(display, field_name,
                                                f"unknown event kind {kind!r} (known: {', '.join(ALERT_KINDS)})"))
        elif lower == "template":
            problem = _template_problem(value)
            if problem:
                problems.append(Problem(display, field_name, problem))
        elif lower == "headers":
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                problems.append(Problem(display, field_name, "must be an object of header names to strings"))
        else:
            problems.append(Problem(display, field_name, unknown_key(key, _ALERT_KEYS), warning=True))
    return problems


#: keys whose values may be secrets: written in the file, or ``{"file": PATH}`` (its
#: content, one trailing newline dropped) or ``{"env": NAME}``; never shown
SECRET_KEYS = ("serviceManagementRedisAddress", "nginxRedisAddress", "serviceManagementRedisUsername",
               "serviceManagementRedisPassword", "controlSecret")
#: the same inside ``alerts`` (and each value of ``alerts.headers``)
ALERT_SECRET_KEYS = ("webhookUrl", "template")
#: what a redacted secret reads as
REDACTED = "<redacted>"


def redacted_alerts(alerts: dict) -> dict:
    """``alerts`` with its secret values (webhook, template, header values) redacted."""
    secret = {k.lower() for k in ALERT_SECRET_KEYS}
    shown_alerts: dict = {}
    for key, value in alerts.items():
        if key.lower() in secret:
            value = REDACTED
        elif key.lower() == "headers" and isinstance(value, dict):
            value = {header: REDACTED for header in value}
        shown_alerts[key] = value
    return shown_alerts


def resolve_secret(value: Any, folder: str) -> tuple[Any, Optional[str]]:
    """``value``, or the secret a ``{"file": PATH}`` / ``{"env": NAME}`` reference names
    (a relative PATH from the config file's folder), with the problem when it cannot
    be read."""
    if not isinstance(value, dict):
        return value, None
    if len(value) != 1 or next(iter(value)).lower() not in ("file", "env") \
            or not isinstance(next(iter(value.values())), str):
        return None, 'must be the value, {"file": "/run/secrets/NAME"} or {"env": "NAME"}'
    kind, name = next(iter(value.items()))
    if kind.lower() == "env":
        found = os.environ.get(name)
        if found is None:
            return None, f"environment variable {name} is not set"
        if not found:
            return None, f"environment variable {name} is empty"
        return found, None
    path = os.path.join(folder, name)
    try:
        with open(path, encoding="utf-8") as handle:
            found = handle.read()
    except (OSError, UnicodeDecodeError) as error:
        return None, f"cannot read secret file {path}: {getattr(error, 'strerror', None) or error}"
    found = found[:-1] if found.endswith("\n") else found
    if not found:
        return None, f"secret file {path} is empty"
    return found, None


def _resolve_secrets(display: str, data: KeyedObject, folder: str) -> list[Problem]:
    """Replace every secret reference in ``data`` by its secret, in place; a reference
    that cannot be read is an error naming the key (and is dropped)."""
    problems: list[Problem] = []

    def resolve(holder: dict, key: Any, name: str) -> None:
        value, problem = resolve_secret(holder[key], folder)
        if problem:
            problems.append(Problem(display, name, problem))
            del holder[key]
        else:
            holder[key] = value

    for key in SECRET_KEYS:
        lower = key.lower()
        if lower not in data:
            continue
        if isinstance(data[lower], list):  # controlSecret: each may be a reference
            for i in range(len(data[lower])):
                value, problem = resolve_secret(data[lower][i], folder)
                if problem:
                    problems.append(Problem(display, f"{data.spelled(lower)}[{i}]", problem))
                data[lower][i] = value
            if any(p.field.startswith(data.spelled(lower) + "[") for p in problems):
                del data[lower]
        else:
            resolve(data, lower, data.spelled(lower))
    sentinels = data.get("servicemanagementredissentinels")
    if isinstance(sentinels, list):
        for i, entry in enumerate(sentinels):
            value, problem = resolve_secret(entry, folder)
            if problem:
                problems.append(Problem(display, f"{data.spelled('servicemanagementredissentinels')}[{i}]", problem))
            sentinels[i] = value
    alerts = data.get("alerts")
    if isinstance(alerts, KeyedObject):
        spelled = data.spelled("alerts")
        for key in ALERT_SECRET_KEYS:
            if key.lower() in alerts:
                resolve(alerts, key.lower(), f"{spelled}.{alerts.spelled(key.lower())}")
        headers = alerts.get("headers")
        if isinstance(headers, dict):
            for header in list(headers):
                resolve(headers, header, f"{spelled}.{alerts.spelled('headers')}.{header}")
    return problems


#: service descriptions read from elsewhere than files, by URL prefix
REMOTE_SOURCES = ("s3://", "ssm:")


def _service_location(config_path: str, services: str) -> tuple[str, str]:
    """The service files named ``services`` in the config at ``config_path``: the
    absolute path, and the path as the user sees it (beside the config file). An
    ``s3://`` or ``ssm:`` source is both."""
    if services.startswith(REMOTE_SOURCES):
        return services, services
    folder, given_folder = os.path.dirname(os.path.abspath(config_path)), os.path.dirname(config_path)
    display = services if os.path.isabs(services) else os.path.normpath(os.path.join(given_folder, services))
    return os.path.normpath(os.path.join(folder, services)), display


def service_location(config_path: str) -> Optional[tuple[str, str]]:
    """Where the config file at ``config_path`` says the service files are, read from
    its JSON alone (for ``validate``, when the config has errors); None when it does
    not say (or is no JSON object)."""
    try:
        data = jsonfile.load(config_path)
    except jsonfile.JsonFileError:
        return None
    if not isinstance(data, KeyedObject):
        return None
    services = data.get("servicedescriptionfilename", "services.json")
    return _service_location(config_path, services) if isinstance(services, str) and services else None


def changed_keys(before: Any, after: Any) -> list[str]:
    """The keys of a config file (two loads of its JSON object) that were added,
    removed or given another value, as the file spells them. A secret given as
    ``{"file": ...}`` compares by its reference: the file it names is read only at
    start."""
    old = {lower: value for lower, _, value in before.items_spelled()}
    new = {lower: value for lower, _, value in after.items_spelled()}
    spelled = {**{lower: before.spelled(lower) for lower in old}, **{lower: after.spelled(lower) for lower in new}}
    return sorted(spelled[k] for k in old.keys() | new.keys() if old.get(k) != new.get(k))


def resolve_config_path(given: Optional[str]) -> str:
    """``--config``, else ``$WARDEN_CONFIG``, else ``./config.json``."""
    return given or os.environ.get("WARDEN_CONFIG") or "config.json"


def env_name(key: str) -> str:
    """The environment variable that sets config key ``key``:
    ``serviceManagementRedisAddress`` -> ``WARDEN_SERVICE_MANAGEMENT_REDIS_ADDRESS``."""
    return "WARDEN_" + re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key).upper()


def _from_environment(text: str, check: Callable[[Any], Optional[str]]) -> Any:
    """A variable's value: a list or object as JSON; a number or true/false as JSON when
    the key takes no string; any other text as it is."""
    stripped = text.strip()
    if stripped[:1] in ("[", "{") or check(text) is not None:
        try:
            return json.loads(stripped)
        except ValueError:
            return text
    return text


def read_settings(path: str) -> tuple[Optional[KeyedObject], dict[str, str], list[Problem]]:
    """The settings in force: the config file's JSON object at ``path`` with every
    ``WARDEN_<KEY>`` variable over it (the file may be missing when one is set); the
    source of each key given (``WARDEN_...`` or the file as the user named it); and the
    problems that stop reading (None then)."""
    given = {key: os.environ[env_name(key)] for key in _SPELLED if os.environ.get(env_name(key))}
    if os.path.exists(path):
        try:
            data = jsonfile.load(path)
        except jsonfile.JsonFileError as error:
            return None, {}, [Problem(path, "-", str(error))]
        if not isinstance(data, KeyedObject):
            return None, {}, [Problem(path, "-", "must be a JSON object")]
    elif given:
        data = KeyedObject([])
    else:
        return None, {}, [Problem(path, "-", f"config file not found: looked for {os.path.abspath(path)} "
                                             "(give another with --config PATH or WARDEN_CONFIG, or set "
                                             "WARDEN_<KEY> variables)")]
    problems = jsonfile.duplicate_problems(path, "", data)
    sources = {data.spelled(lower): path for lower in data}
    for key, text in given.items():
        lower = key.lower()
        sources.pop(data.spelled(lower), None)
        data[lower] = _from_environment(text, _KEYS[lower][1])
        data.spelling[lower] = env_name(key)
        sources[key] = env_name(key)
    return data, sources, problems


def settings_view(path: str) -> tuple[list[tuple[str, str, str]], list[Problem], bool]:
    """``warden config``: each known key, its value in force as JSON (a secret
    redacted) and where it came from (``environment WARDEN_...``, ``file PATH``, or
    ``default``); the problems; and whether the config file exists."""
    config, problems = load_config(path)
    data, sources, _ = read_settings(path)
    rows = []
    defaults = {f.name: f.default for f in Config.__dataclass_fields__.values()}
    secret = {k.lower() for k in SECRET_KEYS}
    for key, (attr, _) in _SPELLED.items():
        lower = key.lower()
        if data is not None and lower in data:
            value: Any = data[lower]
            origin = sources.get(key) or sources.get(data.spelled(lower), path)
            source = f"environment {origin}" if origin.startswith("WARDEN_") else f"file {origin}"
            if lower in secret:
                value = REDACTED
            elif lower == "alerts" and isinstance(value, dict):
                value = redacted_alerts(value)
        else:
            value, source = defaults.get(attr), "default"
            if isinstance(value, RedisAddress):
                value = value.display
        rows.append((key, json.dumps(value, separators=(",", ":"), default=str), source))
    return rows, problems, os.path.exists(path)


def load_config(path: str) -> tuple[Optional[Config], list[Problem]]:
    """Read the config file at ``path`` (as the user gave it).

    Returns the config (None when it has errors) and every problem found, warnings
    included, as ``FILE: FIELD: problem`` records.
    """
    display = path
    data, sources, problems = read_settings(path)
    if data is None:
        return None, problems
    problems += _resolve_secrets(display, data, os.path.dirname(os.path.abspath(path)))
    values: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for lower, spelled, value in data.items_spelled():
        if lower not in _KEYS:
            problems.append(Problem(display, spelled, unknown_key(spelled, _SPELLED), warning=True))
            extra[spelled] = value
            continue
        attr, check = _KEYS[lower]
        problem = check(value)
        if problem:
            problems.append(Problem(display, spelled, problem))
        elif attr:
            values[attr] = value

    for attr, db_key, default_db in (
        ("service_management_redis", "servicemanagementredisdatabasenumber", 11),
        ("nginx_redis", "nginxredisdatabasenumber", 0),
    ):
        text = values.pop(attr, "127.0.0.1:6379")
        db = data.get(db_key) if is_int(data.get(db_key)) else None
        try:
            values[attr] = parse_redis_address(text, db, default_db)
        except ValueError as error:
            key = "serviceManagementRedisAddress" if attr.startswith("service") else "nginxRedisAddress"
            problems.append(Problem(display, data.spelled(key.lower()), str(error)))

    sentinels, master = data.get("servicemanagementredissentinels"), data.get("servicemanagementredissentinelmaster")
    if (sentinels is None) != (master is None):
        given, missing = (("servicemanagementredissentinels", "serviceManagementRedisSentinelMaster")
                          if master is None else
                          ("servicemanagementredissentinelmaster", "serviceManagementRedisSentinels"))
        problems.append(Problem(display, data.spelled(given), f"needs {missing} as well"))
    elif sentinels is not None and _sentinels(sentinels) is None and _master_name(master) is None \
            and "service_management_redis" in values:
        found = parse_sentinels(sentinels)
        values["service_management_redis"] = replace(
            values["service_management_redis"], sentinels=found.pairs, master=master,
            sentinel_auth=found.auth, sentinel_tls=found.tls)
    login = {attr: values.pop(attr) for attr in ("username", "password") if attr in values}
    if login and "service_management_redis" in values:
        central = values["service_management_redis"]
        parsed = urlparse(central.url)
        if not central.sentinels and (parsed.username or parsed.password):
            problems.append(Problem(display, data.spelled("servicemanagementredisaddress"),
                                    "carries a user or password, and serviceManagementRedisUsername or "
                                    "serviceManagementRedisPassword is given too: give one or the other"))
        values["service_management_redis"] = replace(central, **login)

    handlers = values.get("handlers", Config.handlers)
    if "servicemanagementredisaddress" not in data and sentinels is None and "ecs" in handlers:
        # The default fits one machine; on a cluster's host it elects that host alone.
        problems.append(Problem(display, "serviceManagementRedisAddress", UNSET_CENTRAL, warning=True))

    if "min_replicas_to_act" not in values:
        # Under Sentinel a failover may promote a replica: act only on what one holds.
        values["min_replicas_to_act"] = 1 if sentinels is not None else 0

    for enum in ("zone_check", "log_level", "log_format"):
        if enum in values:
            values[enum] = _enum(values[enum])
    if "container_labels" in values:
        values["container_labels"] = _enum(values["container_labels"]) == "on"
    values["service_description_path"], values["service_description_display"] = _service_location(
        path, values.pop("service_description_path", "services.json"))
    for attr in ("handlers", "label_frontends", "label_load_balancers"):
        if attr in values:
            values[attr] = tuple(values[attr])
    if "control_secrets" in values:
        values["control_secrets"] = parse_secrets(values["control_secrets"])[0]

    if isinstance(data.get("alerts"), KeyedObject):
        problems += _alert_problems(display, data.spelled("alerts"), data["alerts"])

    heartbeat = values.get("heartbeat_interval_seconds", Config.heartbeat_interval_seconds)
    lease = values.get("lease_seconds", Config.lease_seconds)
    if lease < 2 * heartbeat:
        problems.append(Problem(display, data.spelled("leaseseconds"),
                                "must be at least twice heartbeatIntervalSeconds"))
    # A candidate stands again at 80 % of its entry's life; the election it entered
    # closes up to a guard time later: a shorter entry never reaches a claim.
    guard = values.get("guard_time_seconds", Config.guard_time_seconds)
    expiry = values.get("candidate_expiry_seconds", Config.candidate_expiry_seconds)
    if expiry < 2 * guard:
        problems.append(Problem(display, data.spelled("candidateexpiryseconds"),
                                f"must be at least twice guardTimeSeconds ({2 * guard:g} s here): "
                                "an entry must outlive the election it entered"))

    if any(not p.warning for p in problems):
        return None, problems
    return Config(path=os.path.abspath(path), display_path=display, extra=extra, sources=sources, **values), problems


def with_identity(config: Config, **identity: Any) -> Config:
    """A copy of ``config`` with identity fields (instance_id, availability_zone,
    region, on_ec2) filled in."""
    return replace(config, **{k: v for k, v in identity.items() if v})


def require(config: Optional[Config], problems: list[Problem]) -> Config:
    """The config, or a :class:`ConfigError` listing its errors."""
    if config is None:
        raise ConfigError("\n".join(str(p) for p in problems if not p.warning))
    return config
