-- GET /users/{id} for ids picked at random from the file named by the first argument.
local ids = {}
init = function(args)
  for line in io.lines(args[1]) do ids[#ids + 1] = line end
  math.randomseed(os.time() + math.floor(os.clock() * 1000000))
end
request = function()
  return wrk.format("GET", "/users/" .. ids[math.random(#ids)])
end
