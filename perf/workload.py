"""What the benchmark's clients send: recipients, texts and the send request.

Shared by the locustfile and the latency probe (``perf/probe.py``); it imports neither
locust nor gevent, so an asyncio client can use it.
"""

from __future__ import annotations

import random

from kaskad.v1 import notification_pb2

# Russian mobile operators' DEF codes (+7 9xx); every number drawn from them is valid.
MOBILE_CODES = (
    *range(900, 930),
    *range(931, 940),
    *range(950, 954),
    958,
    *range(960, 970),
    977,
    978,
    *range(980, 990),
    *range(991, 1000),
)
POPULATION_SIZE = 20_000
POPULATION_SEED = 20_240_917

_SMS_CODE = "Ваш код подтверждения: {code}. Никому не сообщайте его, даже сотрудникам банка."
TEXTS = (
    _SMS_CODE,
    "Заказ №{order} собран и передан в доставку. Курьер привезёт его {day} с 10:00 до 14:00; "
    "за час до приезда он позвонит. Изменить время или адрес можно в приложении.",
    "Ваша запись к врачу подтверждена: {day}, 09:30, кабинет 214. Если планы изменились, "
    "отмените запись не позднее чем за сутки — так её сможет занять другой пациент.",
    "Платёж по договору {order} на сумму 12 480,00 ₽ получен. Спасибо! Следующий платёж — "
    "{day}. Автоплатёж можно подключить в личном кабинете.",
    "Your parcel {order} is on its way and will arrive {day}. Track it at the pickup point page.",
    "Посылка {order} ожидает вас в пункте выдачи до {day}. Код получения: {code}.",
    "Напоминаем: {day} плановое отключение горячей воды с 08:00 до 20:00 по адресу "
    "ул. Ленина, д. 12. Приносим извинения за неудобства. Управляющая компания «Дом-Сервис».",
    "Security alert: a new sign-in to your account from Moscow, Russia. If it was not you, "
    "reset your password now and contact support; code {code}.",
)
DAYS = ("сегодня", "завтра", "12 марта", "1 апреля", "в пятницу", "в понедельник")


def phone_population(size: int = POPULATION_SIZE, seed: int = POPULATION_SEED) -> list[str]:
    """A fixed, reproducible set of valid Russian mobile numbers in E.164 (+7 9xx xxx xx xx)."""
    rng = random.Random(seed)
    return [f"+7{rng.choice(MOBILE_CODES)}{rng.randrange(10_000_000):07d}" for _ in range(size)]


PHONES = phone_population()


def render_text(rng: random.Random) -> str:
    return rng.choice(TEXTS).format(
        code=f"{rng.randrange(10_000):04d}",
        order=f"{rng.randrange(10**7, 10**8)}",
        day=rng.choice(DAYS),
    )


def send_request(rng: random.Random, idempotency_key: str) -> notification_pb2.SendNotificationRequest:
    """One unique send as the benchmark's clients make it: a drawn recipient and a rendered text."""
    return notification_pb2.SendNotificationRequest(
        idempotency_key=idempotency_key,
        recipient=notification_pb2.Recipient(phone=rng.choice(PHONES)),
        text=render_text(rng),
        metadata={"source": "perf", "order": str(rng.randrange(10**6))},
    )
