-- Apply the face events of ONE frame of one stream to the session and track aggregates,
-- atomically and at most once: a per-(session, stream, epoch) high-water mark of frame_num
-- makes a replay of frames already applied a no-op. data.stream is the stream's scope: the
-- stream id for files (epoch 0), "STREAM@EPOCH" for a live capture (redis_agg.stream_scope),
-- so a restarted or moved live stream starts a fresh mark and fresh track keys.
--
-- KEYS[1] session hash     KEYS[2] session track set   KEYS[3] high-water hash (stream -> frame)
-- KEYS[4..] one track hash per face, in the order of the faces in ARGV[1]
-- KEYS[#KEYS] (when there is one more key than 3 + faces) the session's per-minute hash:
--   field "<minute start, epoch s>:<label>" -> faces with that label in that minute
-- ARGV[1] JSON {"stream": s, "frame": n, "ts": epoch_ms, "faces": [{"track": "s:t", "label": l, "probs": [7]}]}
-- ARGV[2] TTL seconds (every key touched is given it again)
-- Returns the number of faces applied (0 when the frame was already applied), or, when a key
-- exists with another type than the script writes (a key not made by this script), the
-- table {"wrongtype", key, its type} before anything is written: the frame is not applied and
-- the replay guard does not move. The guard is written last, so a frame that fails half-way
-- (an error Redis raises) does not advance it either.

local EMOTIONS = {"angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"}
local data = cjson.decode(ARGV[1])
local ttl = tonumber(ARGV[2])
local frame = tonumber(data.frame)

for k = 1, #KEYS do
  local want = "hash"
  if k == 2 then
    want = "set"
  end
  local have = redis.call("TYPE", KEYS[k])["ok"]
  if have ~= "none" and have ~= want then
    return {"wrongtype", KEYS[k], have}
  end
end

local hw = redis.call("HGET", KEYS[3], data.stream)
if hw and tonumber(hw) >= frame then
  return 0
end

local function span(key, ts)
  local first = redis.call("HGET", key, "first_ts_ms")
  if not first or tonumber(first) > ts then
    redis.call("HSET", key, "first_ts_ms", ts)
  end
  local last = redis.call("HGET", key, "last_ts_ms")
  if not last or tonumber(last) < ts then
    redis.call("HSET", key, "last_ts_ms", ts)
  end
end

local function add_faces(key, faces)
  -- faces: list of {label, probs}; counts and sums are added once per field
  local counts, sums = {}, {0, 0, 0, 0, 0, 0, 0}
  for _, face in ipairs(faces) do
    counts[face.label] = (counts[face.label] or 0) + 1
    for i = 1, 7 do
      sums[i] = sums[i] + face.probs[i]
    end
  end
  redis.call("HINCRBY", key, "faces", #faces)
  for label, n in pairs(counts) do
    redis.call("HINCRBY", key, "e:" .. label, n)
  end
  for i, name in ipairs(EMOTIONS) do
    redis.call("HINCRBYFLOAT", key, "p:" .. name, sums[i])
  end
end

local function set_dominant(key)
  local fields = {}
  for i, name in ipairs(EMOTIONS) do
    fields[i] = "e:" .. name
  end
  local values = redis.call("HMGET", key, unpack(fields))
  local best, best_n = nil, 0
  for i, name in ipairs(EMOTIONS) do
    local n = tonumber(values[i] or "0") or 0
    if n > best_n then
      best, best_n = name, n
    end
  end
  if best then
    redis.call("HSET", key, "dominant", best)
  end
end

local ts = tonumber(data.ts)
local session = KEYS[1]
redis.call("HINCRBY", session, "frames", 1)
span(session, ts)
add_faces(session, data.faces)
for i, face in ipairs(data.faces) do
  local tkey = KEYS[3 + i]
  if redis.call("SADD", KEYS[2], face.track) == 1 then
    redis.call("HINCRBY", session, "tracks", 1)
    redis.call("HSET", tkey, "stream", data.stream, "first_frame", frame)
  end
  add_faces(tkey, {face})
  redis.call("HSET", tkey, "last_frame", frame)
  span(tkey, ts)
  set_dominant(tkey)
  redis.call("EXPIRE", tkey, ttl)
end
set_dominant(session)
local minutes = KEYS[4 + #data.faces]
if minutes then
  local minute = math.floor(ts / 60000) * 60
  local per = {}
  for _, face in ipairs(data.faces) do
    per[face.label] = (per[face.label] or 0) + 1
  end
  for label, n in pairs(per) do
    redis.call("HINCRBY", minutes, minute .. ":" .. label, n)
  end
  redis.call("EXPIRE", minutes, ttl)
end
redis.call("HSET", KEYS[3], data.stream, frame)
for k = 1, 3 do
  redis.call("EXPIRE", KEYS[k], ttl)
end
return #data.faces
