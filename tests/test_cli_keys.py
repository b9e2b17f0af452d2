"""`seekserve keys`: create (shown once), list (never the key), top-up, revoke."""

from __future__ import annotations

from seekserve.accounts.ledger import Ledger
from seekserve.cli import main


def test_keys_commands(tmp_path, capsys):
    db = str(tmp_path / "ledger.db")
    assert (
        main(
            [
                "keys",
                "--ledger",
                db,
                "create",
                "alice",
                "--balance",
                "1.5",
                "--granted",
                "0.25",
                "--concurrency",
                "4",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "created key 1 (alice); shown once, keep it safe:"
    key = out[1]
    record = Ledger(db).authenticate(key)
    assert (record.topped_up_nano, record.granted_nano, record.concurrency_limit) == (
        1_500_000_000,
        250_000_000,
        4,
    )
    assert main(["keys", "--ledger", db, "top-up", "1", "2"]) == 0
    assert capsys.readouterr().out == "key 1 balance: 3.75 USD\n"
    assert main(["keys", "--ledger", db, "list"]) == 0
    listing = capsys.readouterr().out
    assert key not in listing and f"sk-…{key[-4:]}" in listing and "3.75" in listing
    assert main(["keys", "--ledger", db, "revoke", "1"]) == 0
    assert main(["keys", "--ledger", db, "revoke", "1"]) == 1
    assert main(["keys", "--ledger", db, "top-up", "9", "1"]) == 1
    assert Ledger(db).authenticate(key) is None
