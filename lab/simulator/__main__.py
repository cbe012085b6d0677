"""``python -m lab.simulator``: serve the provider simulator until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from dataclasses import replace

from lab.simulator.app import run_simulator
from lab.simulator.settings import (
    DEFAULT_PORT,
    FaultSettings,
    LatencyRange,
    PopulationSettings,
    ProviderLatencies,
    SimulatorSettings,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lab.simulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument(
        "--callback-url",
        default="http://127.0.0.1:8080",
        help="gateway base URL; callbacks go to {url}/callbacks/{vk,viber,sms,voice}; 'none' disables them",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--server-error-rate", type=float, default=0.0)
    parser.add_argument("--duplicate-callback-rate", type=float, default=0.0)
    parser.add_argument("--drop-callback-rate", type=float, default=0.0)
    parser.add_argument(
        "--callback-retry-for",
        type=float,
        default=None,
        help="seconds an untaken callback is posted again (default: a few short retries)",
    )
    parser.add_argument("--callback-retry-every", type=float, default=0.2, help="seconds between them")
    parser.add_argument(
        "--fast", action="store_true", help="latencies of a fraction of a second, every messenger user prompt"
    )
    parser.add_argument(
        "--read-latency",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="seconds from a delivery to its read report (after --fast)",
    )
    return parser.parse_args(argv)


async def serve(settings: SimulatorSettings, host: str, port: int) -> None:
    """Run until SIGINT or SIGTERM."""
    simulator = await run_simulator(settings, host=host, port=port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await simulator.close()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    faults = replace(
        FaultSettings(),
        server_error_rate=args.server_error_rate,
        duplicate_callback_rate=args.duplicate_callback_rate,
        drop_callback_rate=args.drop_callback_rate,
        callback_retry_for_s=args.callback_retry_for,
        callback_retry_every_s=args.callback_retry_every,
    )
    callback_url = None if args.callback_url.lower() == "none" else args.callback_url
    settings = SimulatorSettings(seed=args.seed, callback_base_url=callback_url, faults=faults)
    if args.fast:
        fast = LatencyRange(0.01, 0.2)
        settings = replace(
            settings,
            population=PopulationSettings(vk_slow=0, vk_dormant=0, viber_slow=0, viber_dormant=0),
            latencies=ProviderLatencies(vk=fast, viber=fast, sms=fast, voice=fast, read=fast, slow=fast),
        )
    if args.read_latency:
        read = LatencyRange(*args.read_latency)
        settings = replace(settings, latencies=replace(settings.latencies, read=read))
    asyncio.run(serve(settings, args.host, args.port))


if __name__ == "__main__":
    main()
