-- proxy_push(KEYS=[claims, queue], ARGV=[claim, ttl, invocation...])
--   -> 1 when this call claimed the fan-out and pushed its invocations;
--   -> 0 when the claim was already taken (the executor fell back and pushed them itself).
-- The claim and the push are one atomic step, so a fan-out is queued exactly
-- once whichever of the proxy and the executor gets there first.
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
-- unpack() is bounded by Lua's C stack: push in slices
for i = 3, #ARGV, 1000 do
  redis.call('RPUSH', KEYS[2], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
return 1
