"""Provider adapters (VK, Viber, SMS, voice robot) behind one small interface.

Start with :mod:`providers.base` (the ``ProviderAdapter`` protocol and its
value types), :mod:`providers.errors` (the error tree) and
:func:`providers.adapters.build_adapters`.
"""
