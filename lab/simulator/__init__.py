"""A simulator of the VK, Viber, SMS and voice-robot provider APIs, all on one port.

Start it in-process with :func:`run_simulator` or from a shell with
``python -m lab.simulator --port 8790 --callback-url http://127.0.0.1:8080``.
"""

from lab.simulator.app import STATE_KEY, RunningSimulator, create_app, run_simulator
from lab.simulator.settings import (
    DEFAULT_PORT,
    FaultSettings,
    LatencyRange,
    PopulationSettings,
    ProviderLatencies,
    SimulatorSettings,
)

__all__ = [
    "DEFAULT_PORT",
    "STATE_KEY",
    "FaultSettings",
    "LatencyRange",
    "PopulationSettings",
    "ProviderLatencies",
    "RunningSimulator",
    "SimulatorSettings",
    "create_app",
    "run_simulator",
]
