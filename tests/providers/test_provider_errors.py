"""Each adapter classifies the provider's answers into Unreachable, Rejected and Transient."""

from __future__ import annotations

import pytest
from provider_harness import (
    AdapterFactory,
    CallbackSink,
    RunningSimulator,
    SimulatorClient,
    StartSimulator,
    find_phone,
    reachable_phone,
)

from lab.simulator import FaultSettings
from providers.adapters import ProviderSettings, build_adapters
from providers.base import OutboundMessage, ProviderAdapter
from providers.errors import Rejected, Transient, Unreachable
from providers.transport import TransportSettings
from router.domain import Channel, mask_phone

ONE_ATTEMPT = TransportSettings(max_attempts=1)


def msg(phone: str, text: str = "hello", key: str = "k-1") -> OutboundMessage:
    return OutboundMessage(dedupe_key=key, phone=phone, text=text)


async def test_vk_privacy_codes_are_unreachable_and_phone_stays_masked(
    simulator: RunningSimulator, adapters: AdapterFactory
) -> None:
    phone = find_phone(7, lambda p, ph: not p.on_vk(ph))
    vk = adapters.make("vk", simulator.base_url)

    with pytest.raises(Unreachable) as caught:
        await vk.submit(msg(phone))

    assert caught.value.code in {"900", "901", "902"}
    assert phone not in str(caught.value) and phone not in repr(msg(phone))
    assert mask_phone(phone) in repr(msg(phone))


async def test_vk_too_long_is_rejected_by_the_provider_and_locally(
    simulator: RunningSimulator, adapters: AdapterFactory
) -> None:
    lenient = adapters.make("vk", simulator.base_url, settings={"max_text_length": 10_000})
    strict = adapters.make("vk", simulator.base_url)
    text = "x" * 5000

    with pytest.raises(Rejected) as remote:
        await lenient.submit(msg(reachable_phone("vk"), text))
    with pytest.raises(Rejected) as local:
        await strict.submit(msg(reachable_phone("vk"), text))

    assert remote.value.code == "914"
    assert local.value.code == "914"


async def test_vk_flood_codes_are_transient(
    start_simulator: StartSimulator, adapters: AdapterFactory
) -> None:
    sim = await start_simulator(FaultSettings(api_error_rate=1.0))
    vk = adapters.make("vk", sim.base_url, transport=ONE_ATTEMPT)

    with pytest.raises(Transient) as caught:
        await vk.submit(msg(reachable_phone("vk")))

    assert caught.value.code == "10"


async def test_vk_transient_code_then_success_is_one_delivery(
    start_simulator: StartSimulator, adapters: AdapterFactory
) -> None:
    sim = await start_simulator(FaultSettings(api_error_rate=0.5))
    client = SimulatorClient(sim.base_url)
    vk = adapters.make(
        "vk", sim.base_url, transport=TransportSettings(max_attempts=30, backoff_initial_s=0.001)
    )

    await vk.submit(msg(reachable_phone("vk"), key="flaky"))
    await client.settle()

    assert len(await client.deliveries()) == 1


async def test_viber_non_user_is_unreachable(simulator: RunningSimulator, adapters: AdapterFactory) -> None:
    phone = find_phone(7, lambda p, ph: not p.on_viber(ph))
    viber = adapters.make("viber", simulator.base_url)

    with pytest.raises(Unreachable) as caught:
        await viber.submit(msg(phone))

    assert caught.value.code in {"5", "6", "11"}
    assert phone not in str(caught.value)


async def test_viber_bad_data_and_bad_token_are_rejected(
    simulator: RunningSimulator, adapters: AdapterFactory
) -> None:
    lenient = adapters.make("viber", simulator.base_url, settings={"max_text_length": 5000})
    wrong_token = adapters.make("viber", simulator.base_url, settings={"auth_token": "forged"})

    with pytest.raises(Rejected) as too_long:
        await lenient.submit(msg(reachable_phone("viber"), "y" * 1500))
    with pytest.raises(Rejected) as unauthorized:
        await wrong_token.submit(msg(reachable_phone("viber")))

    assert too_long.value.code == "3"
    assert unauthorized.value.code == "2"


async def test_viber_too_many_requests_is_transient(
    start_simulator: StartSimulator, adapters: AdapterFactory
) -> None:
    sim = await start_simulator(FaultSettings(api_error_rate=1.0))
    viber = adapters.make("viber", sim.base_url, transport=ONE_ATTEMPT)

    with pytest.raises(Transient) as caught:
        await viber.submit(msg(reachable_phone("viber")))

    assert caught.value.code == "12"


async def test_sms_bad_destination_is_unreachable(
    simulator: RunningSimulator, adapters: AdapterFactory
) -> None:
    sms = adapters.make("sms", simulator.base_url)

    with pytest.raises(Unreachable) as caught:
        await sms.submit(msg("+7916"))

    assert caught.value.code == "REJECTED_DESTINATION"


async def test_sms_bad_credentials_and_too_many_segments_are_rejected(
    simulator: RunningSimulator, adapters: AdapterFactory
) -> None:
    wrong_key = adapters.make("sms", simulator.base_url, settings={"api_key": "forged"})
    short_limit = adapters.make("sms", simulator.base_url, settings={"max_segments": 2})
    client = SimulatorClient(simulator.base_url)

    with pytest.raises(Rejected) as unauthorized:
        await wrong_key.submit(msg(reachable_phone("sms")))
    with pytest.raises(Rejected):
        await short_limit.submit(msg(reachable_phone("sms"), "б" * 135))  # three UCS-2 segments

    assert unauthorized.value.code == "401"
    assert (await client.billing())["entries"] == []


async def test_sms_server_error_is_transient(
    start_simulator: StartSimulator, adapters: AdapterFactory
) -> None:
    sim = await start_simulator(FaultSettings(api_error_rate=1.0))
    sms = adapters.make("sms", sim.base_url, transport=ONE_ATTEMPT)

    with pytest.raises(Transient) as caught:
        await sms.submit(msg(reachable_phone("sms")))

    assert caught.value.code == "500"


async def test_voice_invalid_number_is_unreachable(
    simulator: RunningSimulator, adapters: AdapterFactory
) -> None:
    voice = adapters.make("voice", simulator.base_url)

    with pytest.raises(Unreachable) as caught:
        await voice.submit(msg("+1234"))

    assert caught.value.code == "invalid_number"


async def test_voice_text_too_long_is_rejected(simulator: RunningSimulator, adapters: AdapterFactory) -> None:
    voice = adapters.make("voice", simulator.base_url, settings={"max_text_length": 9000})

    with pytest.raises(Rejected) as caught:
        await voice.submit(msg(reachable_phone("voice"), "z" * 3000))

    assert caught.value.code == "text_too_long"


async def test_voice_capacity_is_transient(start_simulator: StartSimulator, adapters: AdapterFactory) -> None:
    sim = await start_simulator(FaultSettings(api_error_rate=1.0))
    voice = adapters.make("voice", sim.base_url, transport=ONE_ATTEMPT)

    with pytest.raises(Transient):
        await voice.submit(msg(reachable_phone("voice")))


async def test_voice_unanswered_call_reports_no_answer_and_bills_nothing(
    simulator: RunningSimulator, adapters: AdapterFactory, callback_sink: CallbackSink
) -> None:
    phone = find_phone(7, lambda p, ph: not p.answers_voice(ph))
    voice = adapters.make("voice", simulator.base_url)
    client = SimulatorClient(simulator.base_url)

    receipt = await voice.submit(msg(phone, key="unanswered"))
    await client.settle()

    [event] = callback_sink.unique_events("voice")
    assert event.provider_message_id == receipt.provider_message_id
    assert not event.kind.reached_person
    assert event.billed_amount is None
    assert await client.deliveries() == []
    assert (await client.billing())["entries"] == []


async def test_connection_refused_is_transient(adapters: AdapterFactory) -> None:
    # Port 9 on localhost has no listener: nothing was sent, so this is safely transient.
    sms = adapters.make("sms", "http://127.0.0.1:9", transport=ONE_ATTEMPT)

    with pytest.raises(Transient):
        await sms.submit(msg(reachable_phone("sms")))


def test_every_adapter_implements_the_protocol() -> None:
    built = build_adapters(ProviderSettings.for_base_url("http://127.0.0.1:1"))
    assert set(built) == set(Channel)
    for channel, adapter in built.items():
        assert isinstance(adapter, ProviderAdapter)
        assert adapter.channel is channel
        assert adapter.callback_path == f"/callbacks/{adapter.name}"
