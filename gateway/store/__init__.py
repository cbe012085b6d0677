"""State: PostgreSQL rows (the truth) and Redis hot data, behind store classes.

SQL lives in ``queries.sql`` and ordered ``migrations/``. May import ``core`` only.
"""
