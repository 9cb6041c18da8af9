-- renew(KEYS=[events, lease], ARGV=[token, px])
--   the heartbeat's beat: the lease holds token -> keep it px milliseconds more  -> 1
--   it lapsed (a beat came late: a stall, a GC pause, a loaded host) and the job still
--   runs -> take it again for px milliseconds, as lease.lua would                  -> 1
--   another delivery holds it, it is done, or the job has ended -> nothing          -> 0
local v = redis.call('GET', KEYS[2])
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return 1
end
if not v and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
