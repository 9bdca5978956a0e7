"""Stand-ins for the hosted services the remote stores talk to, as strict as the real ones.

::

    postgrest.py  Supabase's REST API: the gateway's key check and PostgREST's RPC endpoint, an
                  HTTP server on 127.0.0.1 over a pool of real PostgreSQL connections
    faults.py     what the stand-in can do to a request: reset, timeout, 503, lost answer, a
                  gateway timeout that a retry overlaps, an outage
    jwt.py        HS256 tokens: the API keys and users' access tokens
    realtime.py   Supabase Realtime: the Phoenix-channel websocket protocol as realtime-py
                  speaks it, broadcasting what ``realtime.send()`` writes in the database

The database side (Supabase's roles, ``auth.uid()``, ``realtime.send()``) is created by
tests/pg.py in the template every test database is cloned from.
"""
