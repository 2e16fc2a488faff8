-- KEYS: peers; ARGV: the text of the node's id in an entry's data, most entries examined
local needle, cap = ARGV[1], tonumber(ARGV[2])
local max, examined, oldest = '+', 0, false
while examined < cap do
  local page = redis.call('XREVRANGE', KEYS[1], max, '-', 'COUNT', 500)
  if #page == 0 then break end
  for _, e in ipairs(page) do
    examined = examined + 1
    oldest = e[1]
    local f, kind, data = e[2], '', ''
    for i = 1, #f, 2 do
      if f[i] == 'type' then kind = f[i + 1] elseif f[i] == 'data' then data = f[i + 1] end
    end
    if string.find(data, needle, 1, true) then return {e[1], kind, examined, oldest} end
    if examined >= cap then break end
  end
  max = '(' .. page[#page][1]
end
return {false, false, examined, oldest}
