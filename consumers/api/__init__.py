"""The HTTP API (``wgchain api``): access checks, nodes, hosts, the log, health and metrics."""
