"""What every room shares: records, the error tree, settings, the clock, callers, telemetry.

Imports only ``router`` and ``providers`` from Kaskad, never another room.
"""
