"""Pure decision logic for Kaskad: no network, no database, no clock of its own.

The domain types live in :mod:`router.domain`; providers and the gateway import
them from here, never the other way round (enforced by import-linter).
"""
