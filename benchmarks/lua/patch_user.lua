-- PATCH /users/{id} (a new age) for ids picked at random from the file named by the first argument.
local ids = {}
init = function(args)
  for line in io.lines(args[1]) do ids[#ids + 1] = line end
  math.randomseed(os.time() + math.floor(os.clock() * 1000000))
end
request = function()
  local body = string.format('{"age": %d}', math.random(0, 150))
  return wrk.format("PATCH", "/users/" .. ids[math.random(#ids)],
    {["Content-Type"] = "application/json"}, body)
end
