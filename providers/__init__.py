"""Provider adapters (VK, Viber, SMS, voice robot), their shared interface, and a simulator.

Start with :mod:`providers.base` (the ``ProviderAdapter`` protocol and its
value types), :mod:`providers.errors` (the error tree) and
:func:`providers.adapters.build_adapters`.
"""
