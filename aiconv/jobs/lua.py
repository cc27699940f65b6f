"""Lua shared by aiconv's Redis scripts.

`REDIS_NOW` starts a script that needs the time: Redis's own clock (`TIME`), in seconds with
microseconds, as the local `now`. Time shared between processes comes from Redis, never from a
caller's clock, so every worker compares against the same timestamps. (Redis >= 5 replicates a
script's effects, so reading `TIME` before writing is allowed.)
"""

REDIS_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""
