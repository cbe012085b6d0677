"""Provider test fixtures; they live in provider_harness so tests can import helpers by a unique name."""

from provider_harness import adapters, callback_sink, sim_client, simulator, start_simulator

__all__ = ["adapters", "callback_sink", "sim_client", "simulator", "start_simulator"]
