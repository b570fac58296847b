-- Single-record inserts through PocketBase's REST API (POST /api/collections/w/records, no
-- auth: the collection's create rule is public), each record id unique across threads and
-- runs: args <run-tag> (3 characters of [a-z0-9]). A record id is 15 characters of
-- [a-z0-9]: the tag, the thread (2 digits) and a counter (10 digits).
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
  prefix = args[1] .. string.format("%02d", thread_id)
end

function request()
  counter = counter + 1
  return wrk.format(nil, nil, nil,
    string.format('{"id":"%s%010d","v":"payload"}', prefix, counter))
end
