-- set_many(KEYS=[key...], ARGV=[ttl, value...]) -> the number of keys set
--   SET KEYS[i] to ARGV[i + 1] with a TTL of ARGV[1] seconds: a job's schedules
--   are written in a few calls rather than one command (and one reply) each.
local ttl = ARGV[1]
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], ARGV[i + 1], 'EX', ttl)
end
return #KEYS
