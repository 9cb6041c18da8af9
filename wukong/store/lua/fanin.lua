-- fanin(KEYS=[arrivals, schedule, owner, events, holds],
--       ARGV=[parent, ndeps, ttl, want_schedule, invocation, hold, max_missing])
--   -> 0 while the fan-in still waits for parents, or on a repeated notification;
--   -> {1, schedule blob or ""} to the one invocation whose arrival completes it;
--   with hold = 1 only (delayed I/O: the parent keeps its value in memory, not stored):
--   -> 2: store your value now and notify again with hold = 0 (another invocation's holder
--      keeps its own, or more than max_missing parents have not arrived: a long wait could
--      keep an executor slot from them);
--   -> 3: keep holding and ask again later (parents are missing, or still storing theirs).
-- Arrivals are a set of parent ids, so a repeated notification from the same
-- parent never counts twice.  ``holds`` maps each parent that arrived without
-- storing its value to 'h' .. invocation (keeping it) or 'w' (told to store it).
-- The fan-in is complete when every parent has arrived and every value is
-- stored, or all but the caller's own and those its invocation holds (it runs
-- the fan-in with them from memory).  With holders in several invocations,
-- the first to ask once all have arrived is told to store its value ('w');
-- the last keeps its own, so one invocation's values are never written.
-- A holder that stores its value (told to, or its wait expired) notifies again
-- with hold = 0: that arrival counts now.
-- The completing arrival (invocation and parent) is recorded as the owner:
-- if that invocation is run again (its executor died and its lease expired),
-- its repeated arrival from that parent answers "complete" again, so the
-- fan-in task is not lost; any other repeat gets 0, so the task never fires
-- twice.  Only the owner's parent: a holder's value was never stored, so
-- the fan-in may not start before the re-run has it again; the other values
-- the owner's invocation held keep their holds, and their repeats are told
-- to keep holding until the owner's parent arrives again.  A holder's
-- executor that dies leaves its hold: nobody completes the fan-in until its
-- invocation, run again, arrives once more.  Once the job has ended (its
-- event stream is deleted) nothing is written.
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
  local owner = redis.call('GET', KEYS[3])
  if not new then
    if owner == me then
      return complete()
    end
    if redis.call('HEXISTS', KEYS[5], parent) == 0 then
      return 0  -- an earlier attempt stored this value and arrived
    end
    if owner then  -- complete already: a re-run's owner arrival completes it again, with this value
      if string.sub(owner, 1, #ARGV[5] + 1) == ARGV[5] .. '/' then
        return 3
      end
      return 0
    end
  end
  local mine = 'h' .. ARGV[5]
  local state = mine
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
  local storing = false
  for i = 1, #holds, 2 do
    if holds[i] ~= parent and holds[i + 1] == 'w' then
      storing = true
    elseif holds[i] ~= parent and holds[i + 1] ~= mine then
      redis.call('HSET', KEYS[5], parent, 'w')
      return 2
    end
  end
  if storing then
    return 3
  end
  -- the other holds, if any, are this invocation's: kept for a re-run of it (see above)
  if #holds == 2 then
    redis.call('DEL', KEYS[5])
  else
    redis.call('HDEL', KEYS[5], parent)
  end
  return own()
end
local stored = redis.call('HDEL', KEYS[5], parent) == 1
if not new then
  local owner = redis.call('GET', KEYS[3])
  if owner == me then
    return complete()
  end
  if owner or not stored then
    return 0  -- completed by another arrival (a re-run's held value stored late), or a repeat
  end
end
if not full or redis.call('EXISTS', KEYS[5]) == 1 then
  return 0
end
return own()
