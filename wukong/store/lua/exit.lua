-- exit(KEYS=[events, lease, owner...], ARGV=[ttl, arrival..., then the exit's events:
--      for each, its number of fields and values, then those fields and values])
--   -> 1: the invocation has exited: its events are added and its lease marked done
--         (value "done", ttl seconds), as ``lease.lua`` with px = 0;
--   -> 0: an arrival of this invocation completed one of the fan-ins (owner i is
--         arrival i, ``fanin.lua``): it runs on and exits later; nothing is written;
--   -> -1: the job has ended (its event stream is gone): nothing is written.
-- Sent after an invocation's last fan-in arrivals, in the same pipeline: when
-- none completes its fan-in, the invocation has nothing left to run, and its
-- exit costs no round trip of its own.  An arrival completed its fan-in exactly
-- when the fan-in's owner is that arrival afterwards.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
local n = #KEYS - 2
for i = 1, n do
  if redis.call('GET', KEYS[2 + i]) == ARGV[1 + i] then
    return 0
  end
end
local at = n + 2
while at <= #ARGV do
  local len = tonumber(ARGV[at])
  redis.call('XADD', KEYS[1], '*', unpack(ARGV, at + 1, at + len))
  at = at + len + 1
end
redis.call('SET', KEYS[2], 'done', 'EX', ARGV[1])
return 1
