"""Start-up: settings to a running gateway (``app``, the one composition root) and the CLI.

Loads the lab (simulator, ``kaskad simulate``) lazily, by name, only when asked for.
"""
