"""Running stored cascades: the engine applies the router's transitions; workers claim its work.

May import ``store`` and ``core``.
"""
