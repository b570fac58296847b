-- Single-row inserts, each key unique across threads and runs: args <token> <run-tag>.
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_id", threads)
end

local prefix = ""
local counter = 0

function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. args[1]
  prefix = args[2] .. "-" .. thread_id .. "-"
end

local template =
  '{"statements":[{"sql":"INSERT INTO w(k, v) VALUES (?, ?)","args":["%s%d","payload"]}]}'

function request()
  counter = counter + 1
  return wrk.format(nil, nil, nil, string.format(template, prefix, counter))
end
