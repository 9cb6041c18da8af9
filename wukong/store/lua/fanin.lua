-- fanin(KEYS=[arrivals, schedule, owner, events], ARGV=[parent, ndeps, ttl, want_schedule, invocation])
--   -> 0 while the fan-in still waits for parents, or on a repeated notification;
--   -> {1, schedule blob or ""} to the one invocation whose arrival completes it.
-- Arrivals are a set of parent ids, so a repeated notification from the same
-- parent never counts twice.  The completing invocation is recorded as the
-- owner: if that invocation is run again (its executor died and its lease
-- expired), its repeated arrival answers "complete" again, so the fan-in task
-- is not lost; any other repeat gets 0, so the task never fires twice.
-- Once the job has ended (its event stream is deleted) nothing is written.
local function complete()
  if ARGV[4] == '1' then
    return {1, redis.call('GET', KEYS[2]) or ''}
  end
  return {1, ''}
end
if redis.call('EXISTS', KEYS[4]) == 0 then
  return 0
end
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then
  if redis.call('GET', KEYS[3]) == ARGV[5] then
    return complete()
  end
  return 0
end
local n = redis.call('SCARD', KEYS[1])
if n == 1 then
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
if n < tonumber(ARGV[2]) then
  return 0
end
redis.call('SET', KEYS[3], ARGV[5], 'EX', ARGV[3])
return complete()
