"""Hub mode: `awf-kernel broker`, the only process that talks to Docker.

config.py   the operator's settings (admin bounds, per-user overrides)
protocol.py the wire format and its strict schema (pure)
identity.py who is asking (SO_PEERCRED) and whether they may have kernels
userside.py filesystem work done with the user's own rights
launch.py   a start request -> a running pod
pods.py     the kernels that exist: rebuilt from labels, polled, stopped
server.py   the asyncio unix-socket server
client.py   what a provisioner (or a script) calls
"""
