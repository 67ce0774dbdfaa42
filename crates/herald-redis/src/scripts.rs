//! The Lua scripts: each runs atomically in Redis, so every node sees the same offsets, epochs,
//! idempotency answers and presence.
//!
//! Stream entries have the ID `<offset>-0` and two fields: `d`, the publication without its
//! offset (JSON), and `x`, the Redis time in milliseconds when the entry expires. A channel's meta
//! hash holds `e` (epoch) and `s` (top offset). Pub/Sub messages are `<offset>:<epoch>\n<json>` for
//! publications (`0:` for one without history), `j\n<json>` and `l\n<json>` for join and leave.

use redis::Script;
use std::sync::LazyLock;

/// Removes entries whose `x` passed from the head of stream `KEYS[1]`, so that a publication
/// expires `history_ttl` after its own publish, as in the memory engine. Each entry is deleted
/// once, so the cost is spread over publishes and reads.
const TRIM_EXPIRED: &str = r#"
local function now_ms()
  local t = redis.call('time')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function trim_expired(stream, now)
  -- The head is usually alive: one entry read per call then.
  while true do
    local head = redis.call('xrange', stream, '-', '+', 'COUNT', 1)
    if #head == 0 then return end
    local fields = head[1][2]
    local expires = 0
    for i = 1, #fields, 2 do
      if fields[i] == 'x' then expires = tonumber(fields[i + 1]) end
    end
    if expires > now then return end
    redis.call('xdel', stream, head[1][1])
  end
end
"#;

/// KEYS: stream, meta, idempotency key (or "" for none).
/// ARGV: payload, history_size, history_ttl_ms, meta_ttl_ms, fresh epoch, pubsub channel,
/// idempotency window ms.
/// Returns {offset, epoch, deduplicated (0/1)}.
const PUBLISH: &str = r#"
local idempotency = KEYS[3]
if idempotency ~= '' then
  local seen = redis.call('get', idempotency)
  if seen then
    local sep = string.find(seen, ':', 1, true)
    return {tonumber(string.sub(seen, 1, sep - 1)), string.sub(seen, sep + 1), 1}
  end
end
local size = tonumber(ARGV[2])
local offset = 0
local epoch = ''
if size > 0 then
  epoch = redis.call('hget', KEYS[2], 'e')
  if not epoch then
    -- No meta: the stream's positions were lost (or never existed); start a new epoch and drop
    -- any leftover entries, whose offsets mean nothing in it.
    epoch = ARGV[5]
    redis.call('hset', KEYS[2], 'e', epoch)
    redis.call('del', KEYS[1])
  end
  offset = redis.call('hincrby', KEYS[2], 's', 1)
  local now = now_ms()
  local ttl = tonumber(ARGV[3])
  redis.call('xadd', KEYS[1], 'MAXLEN', size, offset .. '-0', 'd', ARGV[1], 'x', now + ttl)
  trim_expired(KEYS[1], now)
  redis.call('pexpire', KEYS[1], ttl)
  local meta_ttl = tonumber(ARGV[4])
  if meta_ttl > 0 then
    redis.call('pexpire', KEYS[2], meta_ttl)
  else
    redis.call('persist', KEYS[2])
  end
end
redis.call('publish', ARGV[6], offset .. ':' .. epoch .. '\n' .. ARGV[1])
if idempotency ~= '' then
  redis.call('set', idempotency, offset .. ':' .. epoch, 'PX', ARGV[7])
end
return {offset, epoch, 0}
"#;

/// KEYS: stream, meta.
/// ARGV: fresh epoch, mode ("top", "forward" or "reverse"), bound (exclusive offset; 0 for
/// none), count (0 for all), meta ttl ms for a stream created by this read.
/// Returns {top, epoch, first retained offset (top + 1 when none), created (0/1), offset1, data1, ...}.
const HISTORY: &str = r#"
local created = 0
local epoch = redis.call('hget', KEYS[2], 'e')
if not epoch then
  -- Reading a stream fixes its epoch, so a later recovery can tell "nothing published yet"
  -- from "history lost".
  epoch = ARGV[1]
  created = 1
  redis.call('hset', KEYS[2], 'e', epoch)
  redis.call('pexpire', KEYS[2], ARGV[5])
end
local top = tonumber(redis.call('hget', KEYS[2], 's') or '0')
trim_expired(KEYS[1], now_ms())
local first = top + 1
local head = redis.call('xrange', KEYS[1], '-', '+', 'COUNT', 1)
if #head > 0 then first = tonumber(string.match(head[1][1], '^(%d+)')) end
local result = {top, epoch, first, created}
local mode = ARGV[2]
if mode == 'top' then return result end
local bound = tonumber(ARGV[3])
local count = tonumber(ARGV[4])
local entries
if mode == 'forward' then
  local start = '-'
  if bound > 0 then start = '(' .. bound .. '-0' end
  if count > 0 then
    entries = redis.call('xrange', KEYS[1], start, '+', 'COUNT', count)
  else
    entries = redis.call('xrange', KEYS[1], start, '+')
  end
else
  local stop = '+'
  if bound > 0 then stop = '(' .. bound .. '-0' end
  if count > 0 then
    entries = redis.call('xrevrange', KEYS[1], stop, '-', 'COUNT', count)
  else
    entries = redis.call('xrevrange', KEYS[1], stop, '-')
  end
end
for _, entry in ipairs(entries) do
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'd' then
      table.insert(result, tonumber(string.match(entry[1], '^(%d+)')))
      table.insert(result, fields[i + 1])
    end
  end
end
return result
"#;

/// KEYS: cursors hash of a user. ARGV: channel, offset, epoch.
/// Acknowledgements are cumulative: a cursor never moves back within an epoch.
const SAVE_CURSOR: &str = r#"
local old = redis.call('hget', KEYS[1], ARGV[1])
if old then
  local sep = string.find(old, ':', 1, true)
  local old_offset = tonumber(string.sub(old, 1, sep - 1))
  if string.sub(old, sep + 1) == ARGV[3] and old_offset >= tonumber(ARGV[2]) then return 0 end
end
redis.call('hset', KEYS[1], ARGV[1], ARGV[2] .. ':' .. ARGV[3])
return 1
"#;

/// KEYS: expiry zset, info hash. ARGV: member, info JSON, ttl ms.
/// Used for presence (member = client id) and the node registry (member = node id).
const ADD_EXPIRING: &str = r#"
local now = now_ms()
local ttl = tonumber(ARGV[3])
redis.call('zadd', KEYS[1], now + ttl, ARGV[1])
redis.call('hset', KEYS[2], ARGV[1], ARGV[2])
redis.call('pexpire', KEYS[1], ttl)
redis.call('pexpire', KEYS[2], ttl)
return 1
"#;

/// KEYS: expiry zset, info hash. ARGV: member.
const REMOVE_EXPIRING: &str = r#"
redis.call('zrem', KEYS[1], ARGV[1])
redis.call('hdel', KEYS[2], ARGV[1])
return 1
"#;

/// KEYS: expiry zset, info hash. Drops the members whose node stopped refreshing them, then
/// returns the rest as {member1, info1, ...}.
const LIVE_MEMBERS: &str = r#"
local now = now_ms()
local expired = redis.call('zrangebyscore', KEYS[1], '-inf', now)
for _, member in ipairs(expired) do
  redis.call('hdel', KEYS[2], member)
end
if #expired > 0 then redis.call('zremrangebyscore', KEYS[1], '-inf', now) end
return redis.call('hgetall', KEYS[2])
"#;

fn with_helpers(body: &str) -> Script {
    Script::new(&format!("{TRIM_EXPIRED}\n{body}"))
}

pub static PUBLISH_SCRIPT: LazyLock<Script> = LazyLock::new(|| with_helpers(PUBLISH));
pub static HISTORY_SCRIPT: LazyLock<Script> = LazyLock::new(|| with_helpers(HISTORY));
pub static SAVE_CURSOR_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(SAVE_CURSOR));
pub static ADD_EXPIRING_SCRIPT: LazyLock<Script> = LazyLock::new(|| with_helpers(ADD_EXPIRING));
pub static REMOVE_EXPIRING_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(REMOVE_EXPIRING));
pub static LIVE_MEMBERS_SCRIPT: LazyLock<Script> = LazyLock::new(|| with_helpers(LIVE_MEMBERS));
