"""Real local parts for the demo, the tests and the benchmarks: redis-server, anvil,
network namespaces with wireguard-go. Each launcher starts a process on a free port,
remembers its pid and stops only that pid."""
