-- POST /users with an email no other request of this run uses.
local counter = 0
local tag = ""
init = function(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1000000))
  tag = string.format("%08x%08x", math.random(0, 0x7fffffff), math.random(0, 0x7fffffff))
end
-- The headers given with -H (the API key), plus the body's type.
json_headers = function()
  local headers = {["Content-Type"] = "application/json"}
  for name, value in pairs(wrk.headers) do headers[name] = value end
  return headers
end
request = function()
  counter = counter + 1
  local body = string.format(
    '{"name": "Bench User", "email": "bench-%s-%d@example.com", "age": 30}', tag, counter)
  return wrk.format("POST", "/users", json_headers(), body)
end
