"""The SQLite ledger: keys hashed and shown once, balances spent granted-first, usage rows
committed by the writer thread, the schema migrated, committed rows surviving kill -9."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from seekserve.accounts.ledger import Ledger, UsageRow, UsageWriter, hash_key
from seekserve.accounts.limits import ConcurrencyLimiter
from seekserve.accounts.prices import Prices, nano_to_usd_text, usd_to_nano
from seekserve.errors import RateLimited


def row(key_id: int, cost: int, request_id: str = "r") -> UsageRow:
    return UsageRow(key_id, request_id, "deepseek-chat", 64, 10, 5, cost, time.time())


def test_keys_are_stored_hashed_and_authenticate(tmp_path):
    ledger = Ledger(tmp_path / "ledger.db")
    key, record = ledger.create_key("alice", topped_up_nano=usd_to_nano("10"))
    assert key.startswith("sk-") and len(key) == 35
    assert (record.name, record.key_last4, record.total_nano) == ("alice", key[-4:], 10**10)
    raw = (tmp_path / "ledger.db").read_bytes() + (tmp_path / "ledger.db-wal").read_bytes()
    assert key.encode() not in raw and hash_key(key).encode() in raw
    assert ledger.authenticate(key) == record
    assert ledger.authenticate(key[:-1] + ("0" if key[-1] != "0" else "1")) is None
    assert ledger.revoke(record.id) and not ledger.revoke(record.id)
    assert ledger.authenticate(key) is None
    assert [k.name for k in ledger.list_keys()] == ["alice"]


def test_costs_spend_granted_balance_first(tmp_path):
    path = tmp_path / "ledger.db"
    ledger = Ledger(path)
    _, record = ledger.create_key("bob", granted_nano=500, topped_up_nano=1000)
    writer = UsageWriter(path)
    writer.submit(row(record.id, 300))
    assert writer.flush()
    assert (ledger.key(record.id).granted_nano, ledger.key(record.id).topped_up_nano) == (200, 1000)
    writer.submit(row(record.id, 450))  # 200 granted left, 250 from topped-up
    writer.submit(row(record.id, 2000))  # overspend goes negative on topped-up
    assert writer.flush()
    after = ledger.key(record.id)
    assert (after.granted_nano, after.topped_up_nano) == (0, 1000 - 250 - 2000)
    assert sum(r.cost_nano for r in ledger.usage_rows(record.id)) == 2750
    writer.close()


def test_top_up_and_audit(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    _, record = ledger.create_key("c")
    after = ledger.top_up(record.id, topped_up_nano=usd_to_nano("1.5"), granted_nano=7)
    assert (after.topped_up_nano, after.granted_nano) == (1_500_000_000, 7)
    with pytest.raises(ValueError):
        ledger.top_up(record.id, topped_up_nano=-1)
    with pytest.raises(KeyError):
        ledger.top_up(999, topped_up_nano=1)


def test_schema_is_migrated_and_versioned(tmp_path):
    path = tmp_path / "l.db"
    Ledger(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(RuntimeError, match="schema version 99 is newer"):
        Ledger(path)


def test_prices_and_money_text():
    prices = Prices()  # V3.2: $0.028 hit, $0.28 miss, $0.42 output per 1M tokens
    assert prices.cost_nano(1_000_000, 0, 0) == 28_000_000
    assert prices.cost_nano(64, 10, 5) == 64 * 28 + 10 * 280 + 5 * 420
    assert nano_to_usd_text(usd_to_nano("110")) == "110.00"
    assert nano_to_usd_text(12_345_678_999) == "12.34"  # rounded down
    assert nano_to_usd_text(-5_000_000_000) == "-5.00"
    with pytest.raises(ValueError):
        usd_to_nano("0.0000000001")


def test_concurrency_limit_wording():
    limiter = ConcurrencyLimiter()
    with limiter.slot("k", 2), limiter.slot("k", 2):
        with pytest.raises(RateLimited) as error:
            limiter.acquire("k", 2)
        assert error.value.status == 429
        assert error.value.message.startswith(
            "Your current concurrency is 3, which exceeds your concurrency limit of 2."
        )
        assert limiter.in_flight("k") == 2
    assert limiter.in_flight("k") == 0


_WRITER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from seekserve.accounts.ledger import Ledger, UsageRow, UsageWriter
    path, key_id = sys.argv[1], int(sys.argv[2])
    writer = UsageWriter(path)
    n = 0
    while True:
        for _ in range(20):
            n += 1
            writer.submit(UsageRow(key_id, f"r{n}", "m", 1, 1, 1, 7, time.time()))
        writer.flush()
        print(n, flush=True)  # every row up to n is committed
    """
)


def test_kill_9_loses_no_committed_row(tmp_path):
    path = tmp_path / "ledger.db"
    ledger = Ledger(path)
    _, record = ledger.create_key("k", topped_up_nano=10**12)
    ledger.close()
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER_SCRIPT, str(path), str(record.id)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    committed = 0
    assert proc.stdout is not None
    while committed < 400:
        line = proc.stdout.readline()
        assert line, "writer died"
        committed = int(line)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close()
    reopened = Ledger(path)  # opens cleanly: WAL recovery, schema intact
    rows = reopened.usage_rows(record.id)
    assert len(rows) >= committed
    assert [r.request_id for r in rows] == [f"r{i}" for i in range(1, len(rows) + 1)]
    after = reopened.key(record.id)
    assert after.topped_up_nano == 10**12 - 7 * len(rows)  # deduction committed with the row
    reopened.close()
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    check.close()
