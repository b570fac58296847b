-- Point reads by record id through PocketBase's REST API (GET
-- /api/collections/t/records/<id>, no auth: the collection's view rule is public) with a
-- random id: args <rows>. Record ids are the row numbers zero-padded to 15 characters.
local rows = 10000

function init(args)
  rows = tonumber(args[1])
  -- Every wrk thread has a Lua state of its own: a table's address tells them apart.
  math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)"), 16) % 1000003)
end

function request()
  return wrk.format("GET", string.format("/api/collections/t/records/%015d", math.random(rows)))
end
