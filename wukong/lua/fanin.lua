-- fanin(KEYS=[arrivals, schedule], ARGV=[parent, ndeps, ttl, want_schedule])
--   -> 0 while the fan-in still waits for parents (or on a repeated notification);
--   -> {1, schedule blob or ""} to exactly one caller: the one whose arrival completes it.
-- Arrivals are a set of parent ids, so a retried notification from the same
-- parent never counts twice and never fires the task twice.
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then
  return 0
end
local n = redis.call('SCARD', KEYS[1])
if n == 1 then
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
if n < tonumber(ARGV[2]) then
  return 0
end
if ARGV[4] == '1' then
  return {1, redis.call('GET', KEYS[2]) or ''}
end
return {1, ''}
