"""Closing an embedded SQLite reader while a read of it still runs in a worker thread.

A read runs on in its thread after its task is cancelled (``asyncio.to_thread`` cannot stop it);
closing the connection under it crashed the interpreter (a segfault in a CI run, inside
``SqliteLogReader._read``). Each case runs in a child process, so the crash it guards against
fails the test instead of ending the test run."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import asyncio, sys, threading, time
    from pathlib import Path

    from consumers.replay_sources import ReplayStart, SqliteReplaySource
    from gateway.eventlog.deadletter import SqliteDeadLetters
    from gateway.eventlog.sqlite import SqliteLogReader, connect, ensure_log_table

    kind, path, rounds = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    ROWS = 30000

    def fill():
        conn = connect(path)
        ensure_log_table(conn, "events")
        conn.executemany(
            "INSERT INTO events (key, value, ts) VALUES (?, ?, ?)", ((b"k", b"x" * 200, 0) for _ in range(ROWS))
        )
        conn.commit()
        conn.close()

    async def opened():
        if kind == "log":
            reader = SqliteLogReader(path, "g")
            await reader.start()
            return reader, lambda: reader.fetch(ROWS, 0)
        if kind == "replay":
            source = SqliteReplaySource(path)
            await source.open(ReplayStart())
            return source, lambda: source.fetch(ROWS)
        letters = SqliteDeadLetters(path)
        await letters.start()
        return letters, letters.letters

    async def main():
        fill()
        if kind == "dead_letters":
            letters = SqliteDeadLetters(path)
            await letters.start()
            for i in range(3000):
                await letters.dead_letter(b"x" * 200, "bad", str(i))
            await letters.close()
        done = 0
        for i in range(rounds):
            store, read = await opened()

            def in_thread():
                try:
                    asyncio.run(read())
                except Exception:
                    pass  # closed before or while it read: an error, never a crash

            thread = threading.Thread(target=in_thread)
            thread.start()
            time.sleep(0.0005 * (i % 40))
            await store.close()
            thread.join()
            done += 1
        print("closed", done)

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("kind", ["log", "replay", "dead_letters"])
def test_closing_while_a_read_runs_in_its_thread_is_no_crash(kind: str, tmp_path: Path) -> None:
    rounds = 60
    done = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", SCRIPT, kind, str(tmp_path / "log.sqlite3"), str(rounds)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["closed", str(rounds)]
