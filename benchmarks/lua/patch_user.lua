-- PATCH /users/{id} (a new age) for ids picked at random from the file named by the first argument.
local ids = {}
init = function(args)
  for line in io.lines(args[1]) do ids[#ids + 1] = line end
  math.randomseed(os.time() + math.floor(os.clock() * 1000000))
end
-- The headers given with -H (the API key), plus the body's type.
json_headers = function()
  local headers = {["Content-Type"] = "application/json"}
  for name, value in pairs(wrk.headers) do headers[name] = value end
  return headers
end
request = function()
  local body = string.format('{"age": %d}', math.random(0, 150))
  return wrk.format("PATCH", "/users/" .. ids[math.random(#ids)],
    json_headers(), body)
end
