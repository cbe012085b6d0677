"""The edges: gRPC servicers, interceptors and conversions; provider callbacks; the report page.

Converts at the edge (``convert``) and calls into ``accept`` and ``store``; holds no state.
"""
