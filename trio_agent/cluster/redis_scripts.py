"""The Lua scripts of :class:`~trio_agent.cluster.redis_store.RedisStore`.

A script runs atomically in Redis (no other command runs between its lines), so a
check and the write that depends on it cannot be split by another node: that is
how two RESUMEs with the same token, or two nodes claiming the same dead request,
get exactly one winner. Every script but ``APPEND_FRAMES`` (which writes the frames
of every session of a round trip) touches only keys of one session, which share
the hash tag ``{session_id}`` (one slot of a Redis Cluster), but for the lease key a
take-over or a claim looks at; "now" is Redis's own clock (``TIME``), so the nodes'
clocks never have to agree.

The session record is a hash: ``owner``, ``epoch``, ``digest``, ``created_ms``,
``last_seen_ms``, ``deadline_ms`` (empty while a connection is attached),
``denied``, ``agent_state``, ``ttl_ms`` (the TTL its keys get back on a take-over),
``spent`` (the digest the last take-over spent: see ``TAKE_OVER``).
"""

from __future__ import annotations

__all__ = [
    "CLAIM_REQUEST",
    "CLOSE_SESSION",
    "DETACH",
    "OPEN_SESSION",
    "TAKE_OVER",
    "TOUCH_SESSION",
    "UPDATE_RECORD",
]

#: Redis's clock in milliseconds, as a Lua number.
_NOW_MS = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

#: KEYS: record, frames, requests, cuts, claims (the session's keys).
#: ARGV: token digest, new token digest, node id, max denied, the lease keys' prefix.
#: Returns ``{'unknown'}``, ``{'denied'}``, ``{'spent'}`` (the token the last take-over
#: spent, and the node that spent it still holds its lease) or ``{'ok', epoch,
#: previous owner, agent state}``.
#:
#: ``spent`` is the digest the last successful take-over was given. A node killed
#: after it spent a client's token and before its RESUMED (with the next token)
#: reached the client leaves the client holding that spent token: it is accepted
#: once more when the node that spent it (the owner, as no take-over came since) no
#: longer holds its lease. Of two RESUMEs racing with one token exactly one still
#: wins: the winner is alive, so the other finds the token spent by a live node.
#: (The owner's lease key is not one of the session's keys: on a Redis Cluster it
#: would sit in another slot; the rest of the script would run there unchanged.)
TAKE_OVER = (
    _NOW_MS
    + """
local record = KEYS[1]
local f = redis.call('HMGET', record, 'owner', 'digest', 'denied', 'deadline_ms',
                     'agent_state', 'ttl_ms', 'spent')
-- No record, or one written back by a late refresh after the session closed.
if not f[1] then return {'unknown'} end
if f[4] and f[4] ~= '' and now_ms() >= tonumber(f[4]) then return {'unknown'} end
local denied = tonumber(f[3]) or 0
if denied >= tonumber(ARGV[4]) then
  redis.call('HINCRBY', record, 'denied', 1)
  return {'denied'}
end
if f[2] ~= ARGV[1] then
  if f[7] ~= ARGV[1] or f[1] == '' then
    redis.call('HINCRBY', record, 'denied', 1)
    return {'denied'}
  end
  if redis.call('EXISTS', ARGV[5] .. f[1]) == 1 then return {'spent'} end
end
local epoch = redis.call('HINCRBY', record, 'epoch', 1)
redis.call('HSET', record, 'owner', ARGV[3], 'digest', ARGV[2], 'deadline_ms', '',
           'spent', ARGV[1])
local ttl = tonumber(f[6])
if ttl and ttl > 0 then
  for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], ttl) end
end
return {'ok', epoch, f[1], f[5] or ''}
"""
)

#: KEYS: record, frames, requests, cuts, claims. ARGV: window ms, margin ms.
#: Returns 1, or 0 when there is no such session.
DETACH = (
    _NOW_MS
    + """
-- Only the owner detaches: a node whose client left after another node took the
-- session over must not shorten the new owner's keys (its DETACH may land late).
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[3] then return 0 end
local window = tonumber(ARGV[1])
redis.call('HSET', KEYS[1], 'deadline_ms', string.format('%.0f', now_ms() + window))
for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], window + tonumber(ARGV[2])) end
return 1
"""
)

#: KEYS: the session's keys, record first. ARGV: the closing node.
#: Returns 1 when the keys were deleted, 0 when another node owns the session.
#:
#: Only the owner (or anybody, once no record names an owner) closes a session: a
#: node that never heard that its session moved, and whose window for it ran out
#: while the store was out of reach, must not delete the new owner's keys when the
#: store answers again (its close waits in its mirror queue until then).
CLOSE_SESSION = """
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner and owner ~= '' and owner ~= ARGV[1] then return 0 end
redis.call('DEL', unpack(KEYS))
return 1
"""

#: KEYS: requests, claims. ARGV: request id, dead node, fallback TTL ms, claimer (the
#: calling node), the lease keys' prefix.
#: Returns 1 for the one caller that claims the request, 0 for every other.
#:
#: The claim names its claimer. A claimer that dies after it won and before its DONE
#: was stored (which clears the claim, with the request) would otherwise leave the
#: request claimed until its keys expire, and the next claimer waiting for a DONE
#: that never comes. So a claim whose claimer no longer holds its lease is taken
#: over, here, atomically: of two live claimers exactly one still wins (the second
#: finds the first's claim, and the first alive), and a node never wins its own
#: claim twice. (The claimer's lease key is not one of the session's keys: on a
#: Redis Cluster it would sit in another slot; the rest of the script would run
#: there unchanged.)
CLAIM_REQUEST = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
local claimer = redis.call('HGET', KEYS[2], ARGV[1])
if claimer then
  if claimer == ARGV[4] then return 0 end
  if redis.call('EXISTS', ARGV[5] .. claimer) == 1 then return 0 end
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
local ttl = redis.call('PTTL', KEYS[1])
if ttl <= 0 then ttl = tonumber(ARGV[3]) end
redis.call('PEXPIRE', KEYS[2], ttl)
return 1
"""

#: KEYS: record, frames, requests, cuts, claims, frame-bytes (every key of the
#: session). ARGV: owner, epoch, token digest, now ms, TTL ms.
#: Returns 1 when the session was (re)written, 0 when the store holds it for another
#: node: at a higher epoch, or at the same epoch owned by another.
#:
#: Replaces whatever the store holds of the session by a new record at ``epoch``
#: (``DEL`` of every key first). A node that writes its sessions anew after the
#: store came back (``resync.py``) may not know that another node took one over
#: meanwhile (the "moved" message was published while it was not subscribed): its
#: rewrite must not delete the new owner's frames and put back a token the client
#: already spent. A record of a lower epoch is overwritten: it is an older owner's
#: own rewrite, after a restart of Redis emptied the store. A new session's id is
#: new (64 random bits), so its first write always finds nothing.
OPEN_SESSION = """
local f = redis.call('HMGET', KEYS[1], 'owner', 'epoch')
if f[1] then
  local stored, mine = tonumber(f[2]) or 0, tonumber(ARGV[2])
  if stored > mine or (stored == mine and f[1] ~= ARGV[1]) then return 0 end
end
redis.call('DEL', unpack(KEYS))
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'epoch', ARGV[2], 'digest', ARGV[3],
           'created_ms', ARGV[4], 'last_seen_ms', ARGV[4], 'deadline_ms', '', 'denied', '0',
           'agent_state', '', 'ttl_ms', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""

#: KEYS: record. ARGV: field, value. Sets the field only on an existing record, so
#: no record is ever created without its TTL. Returns 1, or 0 when there is none.
UPDATE_RECORD = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

#: KEYS: record, frames, requests, cuts, claims. ARGV: now ms, TTL ms. The session
#: was seen: ``last_seen_ms`` (on an existing record only) and every key's TTL, in
#: one command (sent with ``EVAL`` inside the write pipeline: ``EVALSHA`` there would
#: cost coredis a ``SCRIPT EXISTS`` round trip first).
TOUCH_SESSION = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'last_seen_ms', ARGV[1])
end
for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], ARGV[2]) end
return 1
"""

#: KEYS: frames, frame-bytes of each session, in pairs. ARGV: the streams' bound in
#: bytes, ttl ms, then node and packed frames of each session, in pairs (the same
#: order as KEYS). For each session: one entry of a write batch (see
#: ``store_codec.py``), then the oldest entries deleted while the stream holds more
#: than its bound (an exact byte bound, as the node's own replay buffer has: the
#: client's RESUME then finds a gap where the node would have), and both keys' TTL.
#: Every session of a round trip in one command: a command costs the node far more
#: than a session's frames do. (Its keys span the slots of many sessions: on a
#: Redis Cluster it would be one call per slot; ``docs/cluster.md``, "Keys in Redis".)
APPEND_FRAMES = """
local bound = tonumber(ARGV[1])
local ttl = ARGV[2]
for s = 1, #KEYS, 2 do
  local frames, bytes = KEYS[s], KEYS[s + 1]
  local packed = ARGV[s + 3]
  local size = string.len(packed)
  redis.call('XADD', frames, '*', 'o', ARGV[s + 2], 'f', packed, 'z', size)
  local total = redis.call('INCRBY', bytes, size)
  while total > bound do
    local oldest = redis.call('XRANGE', frames, '-', '+', 'COUNT', 1)
    if #oldest == 0 then
      redis.call('SET', bytes, 0)
      break
    end
    local fields = oldest[1][2]
    local gone = 0
    for i = 1, #fields, 2 do
      if fields[i] == 'z' then gone = tonumber(fields[i + 1]) end
    end
    redis.call('XDEL', frames, oldest[1][1])
    total = redis.call('DECRBY', bytes, gone)
  end
  redis.call('PEXPIRE', frames, ttl)
  redis.call('PEXPIRE', bytes, ttl)
end
return 1
"""
