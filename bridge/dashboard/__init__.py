"""The web dashboard and the Prometheus metrics (``agent-supervisor dashboard`` / ``metrics``).

A local page over ``bridge.service.JobService``: the queue, a paged jobs table, one job with
its events and live log, actions, a throughput chart, ``/metrics``. Its libraries (Starlette,
uvicorn, prometheus-client) are the optional extra ``agent-supervisor[dashboard]``: nothing
here is imported by the other commands, and this package's ``__init__`` imports none of them.

The modules, cheapest first:

- ``queries``: the jobs table's query (parsed from a URL) and page, the throughput buckets;
  pure, or plain calls into the service. No web library.
- ``auth``: who may talk to the server (token, cookie, Host and Origin checks) as a pure
  decision, and the small ASGI middleware that enforces it.
- ``live``: ``Feed``, the one background task that watches for job changes (the in-process
  supervisor's subscription, and a look at the store every ``refresh_s``) and publishes
  snapshots that each server-sent-events stream waits on.
- ``metrics``: the Prometheus exposition (prometheus-client only; ``agent-supervisor
  metrics`` uses it without Starlette).
- ``app``: the Starlette routes (``/``, ``/static/…``, ``/api/…``, ``/metrics``).
- ``server``: the command: a loopback socket, the token, uvicorn, the optional supervisor.
- ``static/``: the page (HTML, CSS, JS), shipped in the package: nothing comes from the network.
"""
