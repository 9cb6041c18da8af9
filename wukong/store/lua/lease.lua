-- lease(KEYS=[events, lease], ARGV=[value, px, ttl])
--   px > 0: take the lease for px milliseconds if it is free  -> 1 taken, 0 held (or done) by another
--   px = 0: mark it finished (value "done", ttl seconds)      -> 1
--   -> -1 when the job has ended (its event stream is gone): nothing is written,
--      so a late delivery never leaves a key behind.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
if ARGV[2] ~= '0' then
  if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
    return 1
  end
  return 0
end
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[3])
return 1
