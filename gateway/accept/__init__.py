"""Accepting a send: check it, render its texts, plan its route, store it, hand it to the engine.

May import ``cascade``, ``store`` and ``core``.
"""
