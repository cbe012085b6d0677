"""The imperative shell of Kaskad, in rooms by role.

Each room may import the rooms below it, never one above (import-linter enforces it):

- ``runtime``: start-up and the command line; the one composition root (``runtime.app``).
- ``api``: the edges: gRPC servicers and interceptors, provider callbacks, the report page.
- ``accept``: checking, planning and storing a send (``accept.desk``).
- ``cascade``: the engine that runs stored cascades, and the workers that claim its work.
- ``store``: state: PostgreSQL (the truth) and Redis (shared limits, breakers, hot data).
- ``core``: records, errors, settings, clock, identity and telemetry that every room shares.
"""
