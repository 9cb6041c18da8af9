-- fanin(KEYS=[arrivals, schedule, owner, events, holds],
--       ARGV=[parent, ndeps, ttl, want_schedule, invocation, hold, max_missing])
--   -> 0 while the fan-in still waits for parents, or on a repeated notification;
--   -> {1, schedule blob or ""} to the one invocation whose arrival completes it;
--   with hold = 1 only (delayed I/O: the parent keeps its value in memory, not stored):
--   -> 2: store your value now and notify again with hold = 0 (another holder keeps its own,
--      or more than max_missing parents have not arrived: a long wait could keep an
--      executor slot from them);
--   -> 3: keep holding and ask again later (parents are missing, or still storing theirs).
-- Arrivals are a set of parent ids, so a repeated notification from the same
-- parent never counts twice.  ``holds`` maps each parent that arrived without
-- storing its value to 'h' (keeping it) or 'w' (told to store it).  The fan-in
-- is complete when every parent has arrived and every value is stored, or
-- all but the caller's own (it runs the fan-in with its value from memory).
-- With several holders, the first to ask once all have arrived is told to
-- store its value ('w'); the last keeps its own, so one value is never written.
-- A holder that stores its value (told to, or its wait expired) notifies again
-- with hold = 0: that arrival counts now.
-- The completing arrival (invocation and parent) is recorded as the owner:
-- if that invocation is run again (its executor died and its lease expired),
-- its repeated arrival from that parent answers "complete" again, so the
-- fan-in task is not lost; any other repeat gets 0, so the task never fires
-- twice.  Only the owner's parent: a holder's value was never stored, so
-- the fan-in may not start before the re-run has it again.  A holder's executor that dies
-- leaves its hold: nobody completes the fan-in until its invocation, run
-- again, arrives once more.  Once the job has ended (its event stream is
-- deleted) nothing is written.
local function complete()
  if ARGV[4] == '1' then
    return {1, redis.call('GET', KEYS[2]) or ''}
  end
  return {1, ''}
end
local me = ARGV[5] .. '/' .. ARGV[1]  -- this arrival, as the owner
local function own()
  redis.call('SET', KEYS[3], me, 'EX', ARGV[3])
  return complete()
end
if redis.call('EXISTS', KEYS[4]) == 0 then
  return 0
end
local parent = ARGV[1]
local new = redis.call('SADD', KEYS[1], parent) == 1
local n = redis.call('SCARD', KEYS[1])
if new and n == 1 then
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
local full = n >= tonumber(ARGV[2])
if ARGV[6] == '1' then
  if not new then
    if redis.call('GET', KEYS[3]) == me then
      return complete()
    end
    if redis.call('HEXISTS', KEYS[5], parent) == 0 then
      return 0  -- an earlier attempt stored this value and arrived
    end
  end
  local state = 'h'
  if tonumber(ARGV[2]) - n > tonumber(ARGV[7]) then
    state = 'w'
  end
  if redis.call('HSET', KEYS[5], parent, state) == 1 and redis.call('HLEN', KEYS[5]) == 1 then
    redis.call('EXPIRE', KEYS[5], ARGV[3])
  end
  if state == 'w' then
    return 2
  end
  if not full then
    return 3
  end
  local holds = redis.call('HGETALL', KEYS[5])
  if #holds == 2 then
    redis.call('DEL', KEYS[5])
    return own()
  end
  for i = 1, #holds, 2 do
    if holds[i] ~= parent and holds[i + 1] == 'h' then
      redis.call('HSET', KEYS[5], parent, 'w')
      return 2
    end
  end
  return 3
end
local stored = redis.call('HDEL', KEYS[5], parent) == 1
if not new and not stored then
  if redis.call('GET', KEYS[3]) == me then
    return complete()
  end
  return 0
end
if not full or redis.call('EXISTS', KEYS[5]) == 1 then
  return 0
end
return own()
