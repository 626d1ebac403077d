"""The Manager's keys in the central Redis, changed only by atomic Lua scripts.

Shared with the Perl/Go managers so fleets can migrate host by host:

- ``service-manager``: hash ``id``, ``heartbeat`` (RFC 3339 UTC; the Perl
  ``YYYYMMDDhhmmss`` form is read too), ``subnet`` (the leader's zone) and, from
  Warden, ``epoch``. A Warden record expires after the lease.
- ``leadership-challenge``: sorted set of ``<UTC YYYYMMDDhhmmss>-<instanceId>`` scored by
  a dice roll 0-100; the candidate key of the same name holds the instance id.
- ``<instanceId>-kill``: ``"1"``, lodged for a deposed leader.
- ``warden:epoch``: the fencing token, incremented by every new leader.
- ``warden:election-open``: set by an election's first entry, it expires when the
  election closes a guard time later: every candidate claims at that close, however late
  it entered.
- ``warden:managers``: the instance ids of the Warden managers, each added by the
  manager itself whenever it subscribes; the leader drops the ones whose liveness
  channel it finds empty.
- ``warden:watchers``: the two managers the leader appointed to watch its liveness
  channel (it tells each on that manager's own liveness channel).

Every time is the Redis server's (``TIME`` inside the scripts), so clock skew between
hosts never deposes a healthy leader.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Optional

RECORD = "service-manager"
CHALLENGE = "leadership-challenge"
EPOCH = "warden:epoch"
#: present while an election is open: set by its first entry (the Redis server's time,
#: in ms), it expires at the close, a guard time later; a claim deletes it
OPEN = "warden:election-open"
#: a lodged kill lives this long, in seconds
KILL_SECONDS = 86400
#: each Warden manager holds a subscription to ``<prefix><instanceId>`` on a
#: connection of its own: when its process dies, Redis closes it at once
ALIVE_PREFIX = "warden:alive:"
#: ``warden:gone:<instanceId>`` holds the epoch of a leader whose liveness channel a
#: follower saw empty on two readings in a row: only then does an empty channel make
#: that leader stale, so a connection that blipped and came back deposes nobody
GONE_PREFIX = "warden:gone:"
MANAGERS = "warden:managers"
WATCHERS = "warden:watchers"
#: how many followers watch the leader's liveness channel: one may die with the leader
WATCHER_COUNT = 2

# Helpers every script starts with: the server's clock, and the two heartbeat formats.
_LUA_COMMON = r"""
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local doy = math.floor((153 * ((m + 9) % 12) + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end
local function civil_from_days(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  if m <= 2 then y = y + 1 end
  return y, m, d
end
local function parse_ms(s)
  if not s then return nil end
  local Y, M, D, h, mi, sec, frac, zone = string.match(s,
    '^(%d%d%d%d)-(%d%d)-(%d%d)[Tt ](%d%d):(%d%d):(%d%d)%.?(%d*)(.*)$')
  local offset = 0
  if Y then
    if zone == 'Z' or zone == 'z' then
      offset = 0
    else
      local sign, oh, om = string.match(zone, '^([%+%-])(%d%d):?(%d%d)$')
      if not sign then return nil end
      offset = (tonumber(oh) * 60 + tonumber(om)) * 60000
      if sign == '+' then offset = -offset end
    end
  else
    Y, M, D, h, mi, sec = string.match(s, '^(%d%d%d%d)(%d%d)(%d%d)(%d%d)(%d%d)(%d%d)$')
    frac = ''
    if not Y then return nil end
  end
  local ms = 0
  if frac and #frac > 0 then ms = math.floor(tonumber('0.' .. frac) * 1000 + 0.5) end
  local days = days_from_civil(tonumber(Y), tonumber(M), tonumber(D))
  return (days * 86400 + tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(sec)) * 1000 + ms + offset
end
local function clock(ms)
  local secs = math.floor(ms / 1000)
  local y, m, d = civil_from_days(math.floor(secs / 86400))
  local rem = secs % 86400
  return y, m, d, math.floor(rem / 3600), math.floor(rem % 3600 / 60), rem % 60
end
local function rfc3339(ms)
  local y, m, d, h, mi, sec = clock(ms)
  return string.format('%04d-%02d-%02dT%02d:%02d:%02d.%03dZ', y, m, d, h, mi, sec, ms % 1000)
end
local function stamp(ms)
  return string.format('%04d%02d%02d%02d%02d%02d', clock(ms))
end
-- The leader record and whether it is live: a Warden record (with epoch) for the
-- lease, a Perl/Go record for the legacy age. An unparseable heartbeat is stale. A
-- Warden leader whose liveness channel has no subscriber is stale too (its process
-- died and Redis closed its connection), but only once a follower confirmed it on two
-- readings: ``gone`` is "<id>:<epoch>" from the follower that just did, and the mark it
-- leaves tells the others.
local function leader(now, lease_ms, legacy_ms, gone)
  local rec = redis.call('HMGET', KEYS[1], 'id', 'heartbeat', 'subnet', 'epoch')
  if not rec[1] then return 'none', rec, -1 end
  local hb = parse_ms(rec[2])
  local limit = rec[4] and lease_ms or legacy_ms
  if not hb then return 'stale', rec, -1 end
  local age = now - hb
  if age > limit then return 'stale', rec, age end
  if rec[4] and redis.call('PUBSUB', 'NUMSUB', '@ALIVE@' .. rec[1])[2] == 0 then
    local mark = '@GONE@' .. rec[1]
    if gone == rec[1] .. ':' .. rec[4] then
      redis.call('SET', mark, rec[4], 'PX', lease_ms)
      return 'stale', rec, age
    end
    if redis.call('GET', mark) == rec[4] then return 'stale', rec, age end
  end
  return 'live', rec, age
end
-- The id of the highest live entry of the election (nil when none), reading from the
-- top down: entries above it whose candidate key expired, or older than drop_ms (a
-- winner that never claimed), are dropped. Also returns every member read.
local function best_live(challenge, now, drop_ms)
  local entries = redis.call('ZREVRANGE', challenge, 0, -1)
  for _, member in ipairs(entries) do
    local who = redis.call('GET', member)
    local entered = parse_ms(string.sub(member, 1, 14))
    if (not who) or (not entered) or (now - entered > drop_ms) then
      redis.call('ZREM', challenge, member)
    else
      return who, entries
    end
  end
  return nil, entries
end
""".replace("@ALIVE@", ALIVE_PREFIX).replace("@GONE@", GONE_PREFIX)

# KEYS: record, managers, watchers. ARGV: me, lease_ms, legacy_ms, lodge ("1": I stand,
# so a stale leader's kill is lodged here, in the same script that finds it stale), gone
# ("<id>:<epoch>" of a leader whose liveness channel I saw empty twice, or ""), register
# ("1": add me to the managers, as after each subscription).
# Returns {state, id, age_ms, subnet, epoch, watcher ("1" when the leader appointed me),
# heard (subscribers of my own liveness channel on this server)}.
_CHECK = _LUA_COMMON + r"""
local now = now_ms()
local state, rec, age = leader(now, tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[5])
if state == 'stale' and ARGV[4] == '1' and rec[1] ~= ARGV[1] then
  redis.call('SET', rec[1] .. '-kill', '1', 'EX', %(kill)d)
end
if ARGV[6] == '1' then redis.call('SADD', KEYS[2], ARGV[1]) end
local watcher = redis.call('SISMEMBER', KEYS[3], ARGV[1])
local heard = redis.call('PUBSUB', 'NUMSUB', '@ALIVE@' .. ARGV[1])[2]
return {state, rec[1] or '', tostring(age), rec[3] or '', rec[4] or '', tostring(watcher), heard}
""".replace("@ALIVE@", ALIVE_PREFIX) % {"kill": KILL_SECONDS}

# Before a candidate enters, and before a claim spends an epoch: may this connection's
# ACL user run every command a leader runs, on its keys and channels? (Redis 7's
# redis.acl_check_cmd; an older server has none, and answers a missing permission when
# the command runs.) Returns the first command it may not run, or nil.
_MAY_LEAD = r"""
local function may_not_lead(me)
  if not redis.acl_check_cmd then return nil end
  local needed = {
    {'incr', '@EPOCH@'}, {'get', '@EPOCH@'}, {'del', '@RECORD@'}, {'hset', '@RECORD@', 'id', me},
    {'pexpire', '@RECORD@', '1'}, {'hmget', '@RECORD@', 'id'}, {'exists', me .. '-kill'},
    {'del', me .. '-kill'}, {'del', '@GONE@' .. me}, {'smembers', '@WATCHERS@'},
    {'srem', '@WATCHERS@', me}, {'sadd', '@WATCHERS@', me}, {'srandmember', '@MANAGERS@', '1'},
    {'pubsub', 'numsub', '@ALIVE@' .. me}, {'publish', '@ALIVE@' .. me, '-'},
    {'publish', 'warden:heartbeat', '-'}, {'info', 'replication'}, {'wait', '0', '0'},
  }
  for _, command in ipairs(needed) do
    if not redis.acl_check_cmd(unpack(command)) then
      return string.upper(command[1]) .. ' ' .. command[2]
    end
  end
  return nil
end
"""

def _may_lead() -> str:
    return (_MAY_LEAD.replace("@EPOCH@", EPOCH).replace("@RECORD@", RECORD)
            .replace("@WATCHERS@", WATCHERS).replace("@MANAGERS@", MANAGERS)
            .replace("@GONE@", GONE_PREFIX).replace("@ALIVE@", ALIVE_PREFIX))


# KEYS: record, challenge, open. ARGV: me, dice, candidate expiry seconds, drop_ms,
# guard_ms. The first entry opens the election for guard_ms (the open key lives that
# long). Returns {member entered, "1" when it is the highest live entry now, ms until
# the election closes}.
_ENTER = _LUA_COMMON + _may_lead() + r"""
local denied = may_not_lead(ARGV[1])
if denied then return {'', 'denied', 0, denied} end
local now = now_ms()
local member = stamp(now) .. '-' .. ARGV[1]
redis.call('ZADD', KEYS[2], tonumber(ARGV[2]), member)
redis.call('SET', member, ARGV[1], 'EX', tonumber(ARGV[3]))
redis.call('SET', KEYS[3], now, 'NX', 'PX', tonumber(ARGV[5]))
local best = best_live(KEYS[2], now, tonumber(ARGV[4]))
return {member, best == ARGV[1] and '1' or '0', math.max(0, redis.call('PTTL', KEYS[3]))}
"""

# The leader keeps WATCHER_COUNT live managers appointed to watch its liveness channel:
# a watcher whose own channel is empty is replaced, and a new one is told on its channel
# ("<leader>:<epoch>"). One random manager a beat is looked at, and dropped when gone.
_APPOINT = r"""
local function appoint(managers, watchers, me, epoch, want)
  local count = 0
  for _, w in ipairs(redis.call('SMEMBERS', watchers)) do
    if w == me or redis.call('PUBSUB', 'NUMSUB', '@ALIVE@' .. w)[2] == 0 then
      redis.call('SREM', watchers, w)
    else
      count = count + 1
    end
  end
  for _, m in ipairs(redis.call('SRANDMEMBER', managers, want - count + 1)) do
    if m ~= me then
      if redis.call('PUBSUB', 'NUMSUB', '@ALIVE@' .. m)[2] == 0 then
        redis.call('SREM', managers, m)
      elseif count < want and redis.call('SADD', watchers, m) == 1 then
        redis.call('PUBLISH', '@ALIVE@' .. m, me .. ':' .. epoch)
        count = count + 1
      end
    end
  end
end
""".replace("@ALIVE@", ALIVE_PREFIX)

# KEYS: record, challenge, epoch, managers, watchers, open. ARGV: me, zone, lease_ms,
# legacy_ms, drop_ms, gone, floor (the highest epoch I have seen), watcher count.
# Claims leadership if the record is absent, stale or mine and I hold the highest live
# entry: entries are read from the highest down, and those above the first live one
# whose candidate key expired, or older than drop_ms (a winner that never claimed), are
# dropped. The epoch never goes below ``floor`` + 1 (a promoted replica may have missed
# the last increment; a fresh Redis starts from its clock). Returns {1, epoch} or
# {0, reason, winner}.
_CLAIM = _LUA_COMMON + _APPOINT + _may_lead() + r"""
local now = now_ms()
local me = ARGV[1]
local state, rec = leader(now, tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[6])
if state == 'live' and rec[1] ~= me then return {0, 'leader-live', rec[1]} end
local best_id, entries = best_live(KEYS[2], now, tonumber(ARGV[5]))
if best_id ~= me then return {0, 'not-highest', best_id or ''} end
local denied = may_not_lead(me)
if denied then return {0, 'no-permission', denied} end
if state == 'stale' and rec[1] ~= me then
  redis.call('SET', rec[1] .. '-kill', '1', 'EX', %(kill)d)
end
redis.call('DEL', me .. '-kill')
local floor = tonumber(ARGV[7]) or 0
local current = tonumber(redis.call('GET', KEYS[3]) or '')
if not current then
  redis.call('SET', KEYS[3], math.max(tonumber(redis.call('TIME')[1]), floor))
elseif current < floor then
  redis.call('SET', KEYS[3], floor)
end
local epoch = redis.call('INCR', KEYS[3])
for i = 1, #entries, 500 do
  redis.call('DEL', unpack(entries, i, math.min(i + 499, #entries)))
end
redis.call('DEL', KEYS[2], KEYS[6])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'id', me, 'heartbeat', rfc3339(now), 'subnet', ARGV[2],
           'epoch', tostring(epoch))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
redis.call('DEL', KEYS[5])
appoint(KEYS[4], KEYS[5], me, epoch, tonumber(ARGV[8]))
return {1, epoch}
""" % {"kill": KILL_SECONDS}

# The leader's own record is current: mine, my epoch, the current epoch, no kill.
_STILL_MINE = r"""
local function still_mine(me, epoch)
  local rec = redis.call('HMGET', KEYS[1], 'id', 'epoch')
  if rec[1] ~= me then return 'not-mine' end
  if rec[2] ~= epoch then return 'epoch-changed' end
  if redis.call('GET', KEYS[2]) ~= epoch then return 'epoch-changed' end
  if redis.call('EXISTS', me .. '-kill') == 1 then return 'killed' end
  return 'ok'
end
"""

# KEYS: record, epoch, managers, watchers. ARGV: me, epoch, zone, lease_ms, watcher count.
# Returns {1, heartbeat, subscribers of my own liveness channel on this server} or
# {0, why}.
_HEARTBEAT = (_LUA_COMMON + _STILL_MINE + _APPOINT + r"""
local why = still_mine(ARGV[1], ARGV[2])
if why ~= 'ok' then return {0, why} end
-- Beating, so not gone: a mark left by a blip of the liveness connection goes.
redis.call('DEL', '@GONE@' .. ARGV[1])
local hb = rfc3339(now_ms())
redis.call('HSET', KEYS[1], 'heartbeat', hb, 'subnet', ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]))
appoint(KEYS[3], KEYS[4], ARGV[1], ARGV[2], tonumber(ARGV[5]))
return {1, hb, redis.call('PUBSUB', 'NUMSUB', '@ALIVE@' .. ARGV[1])[2]}
""").replace("@GONE@", GONE_PREFIX).replace("@ALIVE@", ALIVE_PREFIX)

# KEYS: record, epoch. ARGV: me, epoch. Returns "ok" or why not.
_FENCE = _STILL_MINE + r"""
return still_mine(ARGV[1], ARGV[2])
"""

# KEYS: record, epoch. ARGV: me, epoch. Hands the record back if it is still mine, and
# removes my kill key. Returns 1 when the record was mine.
_RELEASE = r"""
local rec = redis.call('HMGET', KEYS[1], 'id', 'epoch')
redis.call('DEL', ARGV[1] .. '-kill')
if rec[1] == ARGV[1] and rec[2] == ARGV[2] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""

# KEYS: record. ARGV: leader id. Lodges a kill for a leader whose zone is inactive, only
# if the record still names it (never on an out-of-date view).
_KILL_IF_LEADER = r"""
if redis.call('HGET', KEYS[1], 'id') == ARGV[1] then
  redis.call('SET', ARGV[1] .. '-kill', '1', 'EX', %(kill)d)
  return 1
end
return 0
""" % {"kill": KILL_SECONDS}


class MayNotLead(Exception):
    """The central Redis's ACL user may not run a command a leader runs (named in the
    message): the candidate neither enters nor claims, so no epoch is spent."""


@dataclass(frozen=True)
class LeaderView:
    """The leader record as one script read it."""

    state: str  # "none", "stale" or "live"
    leader_id: str
    age_ms: int  # -1 when unknown
    zone: str
    epoch: Optional[int]  # None for a Perl/Go record
    #: the leader appointed the reader to watch its liveness channel
    watcher: bool = False
    #: the reader's own liveness channel has a subscriber on the server that answered
    #: (no: the reader's pub/sub connection is on another server, or gone)
    heard: bool = True

    @property
    def legacy(self) -> bool:
        """Written by the Perl/Go tools (no epoch)."""
        return self.state != "none" and self.epoch is None


class ElectionStore:
    """The Manager's atomic operations on the central Redis."""

    def __init__(self, client: Any, instance_id: str, lease_seconds: float,
                 legacy_seconds: float, guard_seconds: float, candidate_expiry: float) -> None:
        self.redis = client
        self.me = instance_id
        self.lease_ms = int(lease_seconds * 1000)
        self.legacy_ms = int(legacy_seconds * 1000)
        self.guard_ms = int(guard_seconds * 1000)
        # Whole seconds (EX), never shorter than configured.
        self.candidate_expiry = max(1, math.ceil(candidate_expiry))
        self._check = client.register_script(_CHECK)
        self._enter = client.register_script(_ENTER)
        self._claim = client.register_script(_CLAIM)
        self._heartbeat = client.register_script(_HEARTBEAT)
        self._fence = client.register_script(_FENCE)
        self._release = client.register_script(_RELEASE)
        self._kill_if_leader = client.register_script(_KILL_IF_LEADER)

    def check(self, standing: bool, gone: str = "", register: bool = False) -> LeaderView:
        """Read the leader record; when ``standing``, lodge a stale leader's kill.
        ``gone`` (``"<id>:<epoch>"``) names a leader whose liveness channel this
        instance saw empty on two readings in a row; ``register`` adds this instance to
        the managers the leader may appoint as watchers."""
        state, leader_id, age, zone, epoch, watcher, heard = self._check(
            keys=[RECORD, MANAGERS, WATCHERS],
            args=[self.me, self.lease_ms, self.legacy_ms, "1" if standing else "0", gone,
                  "1" if register else "0"])
        return LeaderView(_text(state), _text(leader_id), int(float(_text(age))), _text(zone),
                          int(_text(epoch)) if _text(epoch) else None, _text(watcher) == "1",
                          int(heard) > 0)

    def holder(self) -> tuple[str, Optional[int]]:
        """The record's leader id and epoch, read plainly (one command)."""
        leader_id, epoch = self.redis.hmget(RECORD, "id", "epoch")
        text = _text(epoch) if epoch is not None else ""
        return (_text(leader_id) if leader_id is not None else ""), (int(text) if text.isdigit() else None)

    @property
    def drop_ms(self) -> int:
        """How old an entry may be before an election drops it (a winner that never
        claimed). Members carry whole seconds (the Perl format), so an entry can look
        up to a second older than it is: allow for that."""
        return self.guard_ms + self.lease_ms + 1000

    def enter(self, dice: Optional[int] = None) -> str:
        """Enter the election with a dice roll 0-100; returns the member."""
        return self.stand(dice)[0]

    def stand(self, dice: Optional[int] = None) -> tuple[str, bool, float]:
        """Enter the election with a dice roll 0-100: the member, whether it is the
        highest live entry at this moment (one that is not can win only if the entries
        above it are dropped), and the seconds until the election closes (a guard time
        after its first entry; this one's, when it opened it)."""
        roll = random.SystemRandom().randint(0, 100) if dice is None else dice
        member, top, close_ms, *denied = self._enter(
            keys=[RECORD, CHALLENGE, OPEN],
            args=[self.me, roll, self.candidate_expiry, self.drop_ms, max(1, self.guard_ms)])
        if _text(top) == "denied":
            raise MayNotLead(_text(denied[0]))
        return _text(member), _text(top) == "1", int(close_ms) / 1000

    def claim(self, zone: str, gone: str = "", floor: int = 0) -> tuple[Optional[int], str]:
        """Claim leadership: ``(epoch, "")`` on success, else ``(None, why)``. The epoch
        is above ``floor``, the highest this instance has seen."""
        reply = self._claim(keys=[RECORD, CHALLENGE, EPOCH, MANAGERS, WATCHERS, OPEN],
                            args=[self.me, zone, self.lease_ms, self.legacy_ms, self.drop_ms, gone, floor,
                                  WATCHER_COUNT])
        if int(reply[0]) == 1:
            return int(reply[1]), ""
        if _text(reply[1]) == "no-permission":
            raise MayNotLead(_text(reply[2]))
        return None, f"{_text(reply[1])} {_text(reply[2])}".strip()

    def heartbeat(self, epoch: int, zone: str, want: int = 0, wait_ms: int = 0,
                  only_with_replicas: bool = False) -> tuple[bool, str, bool, bool]:
        """Renew my record: ``(True, heartbeat, replicated, heard)`` or ``(False, why I
        am no leader, False, True)``. With ``want``, the renewal is followed on the same
        connection by ``WAIT want wait_ms``: ``replicated`` says whether that many
        replicas have every write made so far (the claim included), so a failover
        cannot take the epoch back. ``only_with_replicas``: when the primary has no
        replica attached there is nothing a failover could promote, and ``replicated``
        is True without a WAIT. ``heard``: my liveness channel has a subscriber on this
        server."""
        keys, args = [RECORD, EPOCH, MANAGERS, WATCHERS], [self.me, epoch, zone, self.lease_ms, WATCHER_COUNT]
        acked = want
        if want and not (only_with_replicas and not self.replicas()):
            pipe = self.redis.pipeline(transaction=False)
            self._heartbeat(keys=keys, args=args, client=pipe)
            pipe.execute_command("WAIT", want, wait_ms)
            reply, acked = pipe.execute()
        else:
            reply = self._heartbeat(keys=keys, args=args)
        ok = int(reply[0]) == 1
        return ok, _text(reply[1]), ok and int(acked) >= want, not ok or int(reply[2]) > 0

    def replicas(self) -> int:
        """How many replicas are attached to the primary, synced or not."""
        return int(self.redis.info("replication").get("connected_slaves", 0))

    def fence(self, epoch: int) -> str:
        """``"ok"`` while ``epoch`` is still the current leader's and mine."""
        return _text(self._fence(keys=[RECORD, EPOCH], args=[self.me, epoch]))

    def release(self, epoch: int) -> bool:
        """Hand the record back if it is still mine; drop my kill key."""
        return int(self._release(keys=[RECORD, EPOCH], args=[self.me, epoch])) == 1

    def kill_if_leader(self, leader_id: str) -> bool:
        """Lodge a kill for ``leader_id`` if the record still names it."""
        return int(self._kill_if_leader(keys=[RECORD], args=[leader_id])) == 1

    def drop_kill(self) -> None:
        """Remove my kill key (after stepping down)."""
        self.redis.delete(f"{self.me}-kill")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
