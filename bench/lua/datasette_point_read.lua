-- Point reads by primary key through Datasette's JSON API (GET /bench/t/<id>.json), with a
-- random id: args <rows>.
local rows = 10000

function init(args)
  rows = tonumber(args[1])
  -- Every wrk thread has a Lua state of its own: a table's address tells them apart.
  math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)"), 16) % 1000003)
end

function request()
  return wrk.format("GET", string.format("/bench/t/%d.json", math.random(rows)))
end
