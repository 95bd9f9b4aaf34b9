"""The Lua scripts the Redis backplane runs: each is one atomic step in Redis.

Key layout and message format: see `hubd.backplane.redis`.
"""

# KEYS: seq. ARGV: prefix, epoch, history_size, now_ms, then per event: channel, target,
# random tail (40 hex), the event JSON after its id.
PUBLISH = """
local prefix, epoch, size, now = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
if redis.call('GET', prefix .. ':epoch') ~= epoch then
  -- Redis lost its data since this node connected: numbering must start again.
  return redis.error_reply('HUBD_EPOCH the epoch changed')
end
local n = (#ARGV - 4) / 4
local seq = redis.call('INCRBY', KEYS[1], n) - n
local ids = {}
for i = 0, n - 1 do
  local channel, target = ARGV[5 + 4 * i], ARGV[6 + 4 * i]
  seq = seq + 1
  local id = epoch .. string.format('%016x', seq) .. ARGV[7 + 4 * i]
  local payload = '{"id":"' .. id .. '"' .. ARGV[8 + 4 * i]
  if target == '' and size > 0 then
    local key = prefix .. ':stream:' .. channel
    local excess = redis.call('XLEN', key) - size + 1
    if excess > 0 then
      -- Remember the newest event this XADD trims: a resume from before it is incomplete.
      local gone = redis.call('XRANGE', key, '-', '+', 'COUNT', excess)
      redis.call('HSET', prefix .. ':evicted', channel,
                 string.match(gone[#gone][1], '^(%d+)'))
    end
    redis.call('XADD', key, 'MAXLEN', size, seq .. '-0', 'f', payload, 't', now)
  end
  redis.call('PUBLISH', prefix .. ':events',
             channel .. '\\n' .. target .. '\\n' .. seq .. '\\n' .. n .. '\\n' .. payload)
  ids[i + 1] = id
end
return ids
"""

# ARGV: prefix, after (seq), then channels. One consistent read (nothing is published
# in between): the current seq, the epoch, then per channel its stream entries past
# `after` and the newest seq trimmed from it.
SNAPSHOT = """
local prefix, after = ARGV[1], ARGV[2]
local out = {redis.call('GET', prefix .. ':seq') or '0',
             redis.call('GET', prefix .. ':epoch') or ''}
for i = 3, #ARGV do
  out[#out + 1] = redis.call('XRANGE', prefix .. ':stream:' .. ARGV[i], '(' .. after .. '-0', '+')
  out[#out + 1] = redis.call('HGET', prefix .. ':evicted', ARGV[i]) or '0'
end
return out
"""

# KEYS: ip key, client key. ARGV: owner value, lease ms, node, principal, subscriptions,
# "1" to claim the IP exclusively (limits.one_connection_per_ip) or "0".
CLAIM = """
if ARGV[6] == '0' or redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('HSET', KEYS[2], 'node', ARGV[3], 'principal', ARGV[4], 'subs', ARGV[5])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return 1
end
return 0
"""

# ARGV: lease ms, node, then per connection: ip key, owner value, client key,
# subscriptions, principal, "1" if the IP is claimed exclusively. An exclusive claim
# Redis lost (restarted without persistence) is made again; one another node took
# meanwhile is left to it.
RENEW = """
for i = 3, #ARGV, 6 do
  local holder = redis.call('GET', ARGV[i])
  if holder == false and ARGV[i + 5] == '1' then
    redis.call('SET', ARGV[i], ARGV[i + 1], 'PX', ARGV[1])
  elseif holder == ARGV[i + 1] then
    redis.call('PEXPIRE', ARGV[i], ARGV[1])
  end
  redis.call('HSET', ARGV[i + 2], 'node', ARGV[2], 'principal', ARGV[i + 4],
             'subs', ARGV[i + 3])
  redis.call('PEXPIRE', ARGV[i + 2], ARGV[1])
end
return 1
"""

# KEYS: ip key, client key. ARGV: owner value.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('DEL', KEYS[2])
return 1
"""
