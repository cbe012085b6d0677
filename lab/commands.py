"""The lab's commands, which ``kaskad`` loads by name only when one is asked for.

``kaskad serve --simulator``, ``kaskad simulator`` and ``kaskad simulate`` come here, so
the product packages never import the lab.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from gateway.core.config import Settings
from lab.simulate import add_arguments, run_command
from lab.simulator import RunningSimulator, SimulatorSettings, run_simulator
from lab.simulator.__main__ import main as simulator_main


async def start_simulator(callback_base_url: str, port: int) -> RunningSimulator:
    """The provider simulator in this process, posting its callbacks to ``callback_base_url``."""
    return await run_simulator(SimulatorSettings(callback_base_url=callback_base_url), port=port)


def simulator(argv: Sequence[str]) -> int:
    """``kaskad simulator``: the simulator on its own, with ``python -m lab.simulator``'s options."""
    simulator_main(list(argv))
    return 0


def simulate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kaskad simulate",
        description="Compare SMS only, a fixed cascade, the router and an oracle in simulated time.",
    )
    add_arguments(parser)
    parser.add_argument("--json", action="store_true", help="same as --format json")
    return parser


async def simulate(argv: Sequence[str], base: Settings, *, json_output: bool = False) -> int:
    """``kaskad simulate``: its gateways talk to the simulator only, with its credentials."""
    args = simulate_parser().parse_args(list(argv))
    args.json = args.json or json_output
    return await run_command(args, base.with_overrides(allow_simulator_credentials=True))
