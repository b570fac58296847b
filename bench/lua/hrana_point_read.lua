-- Point reads by primary key through Hrana (POST .../v2/pipeline, execute + close, as
-- @libsql/client's execute() sends them) with a random id: args <token> <rows>.
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_id", threads)
end

local rows = 10000

function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. args[1]
  rows = tonumber(args[2])
  math.randomseed(os.time() * 100 + thread_id)
end

local template = '{"baton":null,"requests":[{"type":"execute","stmt":{"sql":' ..
  '"SELECT * FROM t WHERE id = ?","args":[{"type":"integer","value":"%d"}],' ..
  '"want_rows":true}},{"type":"close"}]}'

function request()
  return wrk.format(nil, nil, nil, string.format(template, math.random(rows)))
end
