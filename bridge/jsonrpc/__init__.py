"""The stdio JSON-RPC 2.0 server for plugin hosts (``agent-supervisor bridge``).

``protocol`` is the contract as data (codes, methods, pydantic models, JSON Schema);
``dispatch`` the pure decode → dispatch → encode step, whose methods call
``bridge.service.JobService``; ``stdio`` the line loop and the process set-up; ``backend`` the
process around them (the supervisor thread, the lock waiter, notifications). PROTOCOL.md
explains the protocol to people, one example per method.
"""
