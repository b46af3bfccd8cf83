-- wrk script for benches/api.sh: GET /v1/blobs/{id} on a hot set, each request as the
-- blob's owner. HOT_SET names a file of lines "PATH TOKEN" (written by benches/api.sh);
-- every request picks one line at random.
local lines = {}

function init(args)
  local file = assert(io.open(os.getenv("HOT_SET"), "r"), "set HOT_SET to the hot set file")
  for line in file:lines() do
    local path, token = line:match("^(%S+) (%S+)$")
    lines[#lines + 1] = { path, { ["Authorization"] = "Bearer " .. token } }
  end
  file:close()
  math.randomseed(os.time() + (tonumber(tostring({}):match("0x(%x+)"), 16) or 0))
end

function request()
  local pick = lines[math.random(#lines)]
  return wrk.format("GET", pick[1], pick[2])
end

-- Count answers other than 200: the hot set is readable, so every one is an error.
local not_ok = 0
function response(status)
  if status ~= 200 then
    not_ok = not_ok + 1
  end
end

function done(summary, latency, requests)
  io.write(string.format("non-200 answers (this thread): %d\n", not_ok))
end
