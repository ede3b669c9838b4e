"""The running gateway follows its price file: an operator who corrects a rate edits the file,
and new calls are priced with it within seconds, without a restart.

Before, the file was read once at start: after an edit and ``llm-gateway replay --reprice``
(which reads the file anew) the stored history was re-costed at the new rate while every new
call was still priced at the old one, so one tenant and model sat in the stores at two rates.

The file is looked at every ``price_reload_seconds`` (its modification and change times, size
and inode: one ``stat``; the change time because a copy that keeps the modification time, as
``cp -p`` or ``rsync -t`` do, changes nothing else when the size stays: a review's edit went
unseen while ``replay --reprice`` used it). A changed file is read off the event loop once it
has rested :data:`SETTLE_SECONDS` (an editor writing it in bursts), and taken only if it did not
change while it was read. A file that cannot be read or has a bad entry (also one caught
half-written) is logged and the prices in use are kept; the next change is tried again. A file
that disappears keeps the prices in use. A writer that pauses longer than that mid-file is
read as it stands: the README says to write the file aside and rename it over (atomic).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from gateway.pricing.book import CompositePriceBook
from gateway.pricing.pricefile import PriceFile, PriceFileError, load_price_file

log = logging.getLogger(__name__)

Signature = tuple[int, int, int, int]
#: how long a changed file must rest before it is read (seconds since its last change)
SETTLE_SECONDS = 1.0


def _signature(path: Path) -> Signature | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino


class PriceFileWatch:
    def __init__(
        self,
        book: CompositePriceBook,
        path: Path,
        *,
        load: Callable[[Path], PriceFile] = load_price_file,
        settle: float = SETTLE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.book = book
        self.path = path
        self._load = load
        self._settle_ns = int(settle * 1e9)
        self._clock = clock
        self._seen = _signature(path)  # what the book was loaded from at start

    async def check(self) -> bool:
        """Reload the file if it changed since the last look; True when new prices are in use."""
        signature = _signature(self.path)
        if signature == self._seen:
            return False
        if signature is None:
            self._seen = signature
            log.warning("price file %s is gone: keeping prices %s", self.path, self.book.version)
            return False
        if self._clock() * 1e9 - signature[1] < self._settle_ns:
            return False  # changed a moment ago: maybe still being written; the next look
        try:
            prices = await asyncio.to_thread(self._load, self.path)
        except PriceFileError as e:
            self._seen = signature
            log.error("price file %s changed but was not taken, keeping prices %s: %s", self.path, self.book.version, e)
            return False
        if _signature(self.path) != signature:
            return False  # changed while it was read: the next look reads it again
        self._seen = signature
        before = self.book.version
        self.book.use_file(prices)
        if self.book.version == before:  # rewritten with the same prices
            log.info("price file %s rewritten, prices unchanged (%s)", self.path, before)
        else:
            log.warning("price file %s reloaded: prices %s (were %s)", self.path, self.book.version, before)
        return True

    async def run(self, every: float) -> None:
        """Look every ``every`` seconds until cancelled."""
        while True:
            await asyncio.sleep(every)
            try:
                await self.check()
            except Exception:  # never let a surprise stop the watch (or the gateway)
                log.exception("price file %s: reload failed, keeping prices %s", self.path, self.book.version)
