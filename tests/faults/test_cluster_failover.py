"""A Redis Cluster primary killed (`kill -9`) under steady traffic: issue 12's failover proof.

It runs bench/failover.py at a small scale (10 users, a message a second in all, the kill after
15 s, 20 s of traffic after it) on a cluster of its own (ports from 7301, not the tests' shared
7101-7106: its nodes are killed), through one real `aiconv all` process, REDIS_SHARDS=3 (one
shard per primary) and a recovery sweep every 2 s.

What it asserts, and why exactly that (README "Scaling", failover):

- The replica was promoted and traffic went on: updates were accepted after the promotion.
- Every message PostgreSQL stored is answered. PostgreSQL is the truth: whatever of a stored
  message's turn state or jobs died with the old primary, the recovery sweep queues it again.
- An accepted update that was never stored (nor answered) must have been posted *before* the kill:
  the webhook's 200 means the old primary acknowledged the XADD, and asynchronous replication
  may have lost it with that primary. After the kill, every acknowledgement comes from a live
  primary and nothing may be lost. (How many are lost is not asserted: it depends on what was
  in the replication stream at the instant of the kill.)
- A reply part sent twice must be a copy of a part first sent *before* the kill: the only way
  to send a part again is to lose its record in Redis, written right after Telegram accepted it,
  and only the old primary's acknowledged-but-unreplicated writes can be lost.
- The killed node, restarted, rejoins as a replica.

No timing is asserted (promotion and pauses are printed with `-s`): on a loaded 2-core machine
they vary; the deadlines are generous and every wait is on a condition.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench import failover

pytestmark = pytest.mark.faults

FIRST_PORT = int(os.environ.get("AICONV_TEST_FAILOVER_PORT", "7301"))


@pytest.mark.timeout(900)
async def test_a_primary_killed_under_traffic_loses_no_stored_message(tmp_path: Path) -> None:
    args = failover.parse_args(
        [
            "--users", "10", "--rate", "1", "--warmup", "15", "--after", "20",
            "--modes", "all", "--threads", "1", "--recovery-seconds", "2",
            "--first-port", str(FIRST_PORT), "--timeout", "420",
        ]
    )  # fmt: skip
    report = await failover.run(args, workdir=tmp_path)
    summary = "\n".join(report.lines())
    print(summary)  # shown with -s, and in the log of a failure
    failed = f"{summary}\n{report.logs}"

    assert report.promotion_seconds is not None, failed
    assert report.accepted_after_promotion > 0, failed
    # Every update is accepted in the end ("Telegram" posts a refused one again).
    assert report.offered >= 30 and report.sent == report.offered, failed
    assert report.unanswered_stored == [], failed
    assert report.unstored_after_kill == [], failed
    assert report.duplicated_after_kill == [], failed
    assert report.settled, failed
    assert report.rejoined_as_replica, failed
