-- Point reads of rows one user owns, by id: args <path prefix> <stride> <offset> <count>.
-- The ids read are offset + stride * k (k random below count); the request is the prefix
-- followed by the id: Shoal's data API (".../tables/notes?id=eq.") or PocketBase's record
-- view ("/api/collections/notes/records/", ids zero-padded to 15 characters when
-- <pad> is 1). The token goes in the Authorization header (wrk -H).
local prefix, stride, offset, count, pad = "/", 1, 0, 1, 0

function init(args)
  prefix = args[1]
  stride, offset, count = tonumber(args[2]), tonumber(args[3]), tonumber(args[4])
  pad = tonumber(args[5] or "0")
  math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)"), 16) % 1000003)
end

function request()
  local id = offset + stride * math.random(0, count - 1)
  if pad == 1 then
    return wrk.format("GET", prefix .. string.format("%015d", id))
  end
  return wrk.format("GET", prefix .. tostring(id))
end
