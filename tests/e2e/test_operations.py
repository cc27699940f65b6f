"""Operability end to end: the embedded scheduler across two workers, probes, /metrics, logs."""

from __future__ import annotations

import httpx
import psycopg
import pytest

from aiconv.testing.botapi import BotApiDouble
from tests.support.database import query_rows
from tests.support.ports import free_port
from tests.support.processes import Launcher, webhook_settings
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e


def runs(database_url: str, job: str) -> list[tuple[int, str]]:
    rows = query_rows(
        database_url,
        "SELECT slot, runner FROM scheduled_runs WHERE job = %s AND outcome = 'ok'",
        job,
    )
    return [(int(slot), str(runner)) for slot, runner in rows]


async def test_each_scheduled_run_happens_once_across_two_workers(
    launch: Launcher, database_url: str
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DELETE FROM scheduled_runs")
    fast = {"SCHEDULE_GAUGES_SECONDS": "1", "SCHEDULE_SWEEP_SECONDS": "1"}
    await launch("worker", **fast)
    await launch("worker", **fast)
    await eventually(lambda: len(runs(database_url, "gauges_refresh")) >= 5, timeout=60)
    for job in ("gauges_refresh", "stream_sweep"):
        slots = [slot for slot, _ in runs(database_url, job)]
        assert len(slots) == len(set(slots)), f"{job} ran twice in one slot"


async def test_probes_metrics_and_quiet_logs(launch: Launcher, double: BotApiDouble) -> None:
    secret_text = "My secret plan is to paint the moon teal."
    app = await launch("all")
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{app.ops_url}/health")).json() == {"status": "ok"}
        ready = (await http.get(f"{app.ops_url}/ready")).json()
        assert ready["checks"] == {"redis": "ok", "postgres": "ok", "model": "ok", "web": "ok"}
        await double.send_user_message(901, secret_text)
        await double.wait_for_messages(901, 1)
        await eventually(lambda: "reply delivered" in app.logs(), timeout=10)
        metrics = (await http.get(f"{app.ops_url}/metrics")).text
    print("\n".join(line for line in metrics.splitlines() if line.startswith("aiconv_")))
    for sample in (
        'aiconv_updates_received_total{kind="text"} 1.0',
        'aiconv_jobs_total{outcome="ok",stream="updates"}',
        'aiconv_jobs_total{outcome="ok",stream="generate"} 1.0',
        'aiconv_replies_total{outcome="delivered"} 1.0',
        'aiconv_telegram_api_calls_total{method="sendMessage",status="200"} 1.0',
        "aiconv_time_to_first_token_seconds_count 1.0",
        "aiconv_typing_simulation_seconds_count 1.0",
        "aiconv_model_loaded 1.0",
        'aiconv_stream_length{stream="generate"}',
        'aiconv_db_pool_connections{state="size"}',
    ):
        assert sample in metrics, sample
    logs = app.logs()
    assert secret_text not in logs and "paint the moon" not in logs
    assert double.token not in logs
    assert '"chat_id": 901' in logs  # ids are bound to the lines on a message's path


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_web_workers_log_like_every_process_and_their_metrics_add_up(
    launch: Launcher, double: BotApiDouble, workers: str
) -> None:
    # Issue 13, item 8: granian workers never configured logging (console lines, debug, no
    # redaction), and with one worker the webhook's metrics never reached /metrics.
    port = free_port()
    web = await launch(
        "web",
        WEB_WORKERS=workers,
        **webhook_settings(port, "s3cret"),
        # "update received" is a debug line (one per update costs the webhook under load): seen
        # only when the workers read LOG_LEVEL, whose default (info) would hide it.
        LOG_LEVEL="debug",
    )
    async with httpx.AsyncClient() as http:
        for n in range(20):  # new connections, spread over the workers
            update = double.make_update(950 + n, "hello")
            response = await http.post(
                f"{web.web_url}/webhook",
                json=update,
                headers={"X-Telegram-Bot-Api-Secret-Token": "s3cret", "Connection": "close"},
            )
            assert response.status_code == 200

        async def webhook_requests() -> float:
            # The middleware counts a request once its answer is sent: the client may read the
            # answer first, so the count is waited for, then must be exactly 20.
            metrics = (await http.get(f"{web.ops_url}/metrics")).text
            counts = [
                float(line.rsplit(" ", 1)[1])
                for line in metrics.splitlines()
                if line.startswith("aiconv_http_requests_total{") and 'route="/webhook"' in line
            ]
            return sum(counts)

        async def counted_all() -> bool:
            return await webhook_requests() >= 20

        await eventually(counted_all, timeout=10)
        assert await webhook_requests() == 20.0

    # The workers' lines are JSON (LOG_FORMAT=json), at debug (LOG_LEVEL=debug), as configured.
    def received() -> list[dict[str, object]]:
        return [e for e in web.log_events() if e.get("event") == "update received"]

    await eventually(lambda: len(received()) == 20, timeout=10)
    assert all(e["level"] == "debug" and "timestamp" in e for e in received())
    assert "update received" not in "".join(
        line for line in web.logs().splitlines() if not line.startswith("{")
    )


async def test_metrics_enabled_false_turns_the_metrics_endpoint_off(launch: Launcher) -> None:
    # Issue 13, item 8: METRICS_ENABLED was never read.
    web = await launch("web", METRICS_ENABLED="false")
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{web.ops_url}/health")).status_code == 200
        assert (await http.get(f"{web.ops_url}/metrics")).status_code == 404
