"""The command line as people and scripts use it, against a real server and database."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp
import grpc
import redis.asyncio as redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.runtime.app import KaskadApp
from kaskad.v1 import notification_pb2, notification_pb2_grpc
from tests.cascade_harness import free_port


async def kaskad(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.runtime.cli", *args,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_client_key_send_and_get(app: KaskadApp, database_url: str, redis_url: str) -> None:
    env = {"KASKAD_DATABASE_URL": database_url, "KASKAD_REDIS_URL": redis_url}
    code, out, _ = await kaskad("client", "create", "shop", "--json", env=env)
    assert code == 0
    key = json.loads(out)["api_key"]
    code, _, err = await kaskad("client", "create", "shop", env=env)
    assert code == 1 and "already exists" in err

    remote = ["--address", f"127.0.0.1:{app.grpc_port}", "--api-key", key]
    code, out, _ = await kaskad(
        "send", "+79161234567", "--text", "Hello", "--channel", "sms", *remote, "--json"
    )
    assert code == 0
    notification_id = json.loads(out)["notification_id"]

    code, out, _ = await kaskad("get", notification_id, *remote)
    assert code == 0
    assert "state:      accepted" in out and "sms" in out
    assert "+79161234567" not in out  # the phone is shown masked

    code, _, err = await kaskad("send", "+7916", "--text", "Hello", *remote)
    assert code == 1 and "INVALID_ARGUMENT" in err and "recipient.phone" in err

    code, out, _ = await kaskad("client", "revoke", "shop", env=env)
    assert code == 0 and "Revoked 1 key" in out
    code, _, err = await kaskad("get", notification_id, *remote)
    assert code == 1 and "UNAUTHENTICATED" in err


async def test_bad_setting_is_a_clear_error() -> None:
    code, _, err = await kaskad("client", "list", env={"KASKAD_GRPC_ADDRESS": "nowhere"})
    assert code == 2
    assert "KASKAD_GRPC_ADDRESS must look like HOST:PORT" in err


async def test_client_roles_are_set_listed_and_checked(
    app: KaskadApp, database_url: str, redis_url: str
) -> None:
    env = {"KASKAD_DATABASE_URL": database_url, "KASKAD_REDIS_URL": redis_url}
    code, out, _ = await kaskad("client", "create", "books", "--role", "finance", "--json", env=env)
    assert code == 0 and json.loads(out)["role"] == "finance"
    code, _, _ = await kaskad("client", "create", "shop", env=env)
    assert code == 0
    code, out, _ = await kaskad("client", "list", "--json", env=env)
    assert {c["name"]: c["role"] for c in json.loads(out)} == {"books": "finance", "shop": "service"}

    code, out, _ = await kaskad("client", "role", "shop", "finance", env=env)
    assert code == 0 and "now finance" in out
    code, out, _ = await kaskad("client", "list", env=env)
    assert all("finance" in line for line in out.splitlines())
    code, _, err = await kaskad("client", "role", "nobody", "finance", env=env)
    assert code == 1 and "no client named 'nobody'" in err
    code, _, err = await kaskad("client", "role", "shop", "admin", env=env)
    assert code == 2 and "invalid choice" in err


async def test_serve_refuses_the_simulators_public_credentials(tmp_path: Path) -> None:
    env = {
        "KASKAD_DATA_DIR": str(tmp_path / "data"),
        # The embedded default: the refusal comes before any server is started.
        "KASKAD_DATABASE_URL": "",
        "KASKAD_REDIS_URL": "",
        "KASKAD_GRPC_ADDRESS": "127.0.0.1:0",
        "KASKAD_HTTP_ADDRESS": "127.0.0.1:0",
        "KASKAD_ALLOW_SIMULATOR_CREDENTIALS": "false",
    }
    code, _, err = await kaskad("serve", env=env)
    assert code == 2
    assert "KASKAD_ALLOW_SIMULATOR_CREDENTIALS=true" in err and "providers.vk.access_token" in err
    assert "Traceback" not in err
    assert not (tmp_path / "data" / "pg").exists()


async def _answers(socket_file: str) -> bool:
    client = redis.Redis(unix_socket_path=socket_file)
    try:
        return bool(await client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        await client.aclose()


async def test_commands_beside_serve_leave_its_embedded_servers_running(tmp_path: Path) -> None:
    data = tmp_path / "data"
    grpc_port, http_port = free_port(), free_port()
    env = {
        "KASKAD_DATA_DIR": str(data),
        "KASKAD_DATABASE_URL": "",  # the embedded default for PostgreSQL and Redis
        "KASKAD_REDIS_URL": "",
        "KASKAD_GRPC_ADDRESS": f"127.0.0.1:{grpc_port}",
        "KASKAD_HTTP_ADDRESS": f"127.0.0.1:{http_port}",
        "KASKAD_REDIS_CHECK_INTERVAL": "0.1",
        "KASKAD_WORKERS": "0",
        "KASKAD_ALLOW_SIMULATOR_CREDENTIALS": "false",  # --demo asks for them
    }
    with (tmp_path / "serve.log").open("wb") as log:
        server = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.runtime.cli", "serve", "--demo",
            env={**os.environ, **env}, stdout=log, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), timeout=120)
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            socket_file = json.loads((data / "redis.db.settings").read_text())["unixsocket"]
            assert await _answers(socket_file)

            code, out, err = await kaskad("client", "create", "shop", "--json", env=env)
            assert code == 0, err
            key = json.loads(out)["api_key"]
            code, out, err = await kaskad("client", "list", env=env)
            assert code == 0 and "shop" in out, err
            code, _, err = await kaskad("report", "costs", env=env)
            assert code == 0, err

            assert await _answers(socket_file)
            response = await notification_pb2_grpc.NotificationServiceStub(channel).SendNotification(
                notification_pb2.SendNotificationRequest(
                    idempotency_key="beside-the-cli",
                    recipient=notification_pb2.Recipient(phone="+79161234567"),
                    text="Hello",
                ),
                metadata=[("authorization", f"Bearer {key}")],
                timeout=30,
            )
            assert response.notification_id
        await asyncio.sleep(0.5)  # several Redis health checks of the server (every 0.1 s)
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{http_port}/healthz") as answer,
        ):
            health = await answer.json()
        assert health["checks"]["redis"] is True and health["status"] == "ok"
    finally:
        if server.returncode is None:
            server.send_signal(signal.SIGTERM)
        await asyncio.wait_for(server.wait(), timeout=60)
    assert server.returncode == 0
    # The server stopped the servers it started.
    assert not await _answers(socket_file)
    assert not (data / "pg" / "postmaster.pid").exists()
