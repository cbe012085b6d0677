"""Embedded Redis shared by several processes of one data directory: only its owner stops it."""

from __future__ import annotations

import json
from pathlib import Path

import redis

from gateway.runtime.embedded import EmbeddedRedis


def answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def test_a_second_user_uses_the_running_server_and_leaves_it_running(tmp_path: Path) -> None:
    owner = EmbeddedRedis.start(tmp_path)
    try:
        other = EmbeddedRedis.start(tmp_path)
        assert owner.owned and not other.owned
        assert other.url == owner.url
        other.stop()
        assert answers(owner.url)
    finally:
        owner.stop()
    assert not answers(owner.url)


def test_a_server_whose_starter_died_is_taken_over(tmp_path: Path) -> None:
    first = EmbeddedRedis.start(tmp_path)
    # As if the process that started it had been killed: its pid names no process.
    (tmp_path / "redis.owner").write_text("999999999\n")
    heir = EmbeddedRedis.start(tmp_path)
    assert heir.owned and heir.url == first.url
    assert json.loads((tmp_path / "redis.db.settings").read_text())["unixsocket"] in heir.url
    heir.stop()
    assert not answers(first.url)
    assert not (tmp_path / "redis.owner").exists()
