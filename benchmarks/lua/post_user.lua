-- POST /users with an email no other request of this run uses.
local counter = 0
local tag = ""
init = function(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1000000))
  tag = string.format("%08x%08x", math.random(0, 0x7fffffff), math.random(0, 0x7fffffff))
end
request = function()
  counter = counter + 1
  local body = string.format(
    '{"name": "Bench User", "email": "bench-%s-%d@example.com", "age": 30}', tag, counter)
  return wrk.format("POST", "/users", {["Content-Type"] = "application/json"}, body)
end
