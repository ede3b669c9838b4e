"""The running gateway follows its price file: an operator who corrects a rate edits the file,
and new calls are priced with it within seconds, without a restart.

Before, the file was read once at start: after an edit and ``llm-gateway replay --reprice``
(which reads the file anew) the stored history was re-costed at the new rate while every new
call was still priced at the old one, so one tenant and model sat in the stores at two rates.

The file is looked at every ``price_reload_seconds`` (its modification time, size and inode:
one ``stat``). A changed file is read off the event loop. A file that cannot be read or has a
bad entry (also one caught half-written by an editor) is logged and the prices in use are kept;
the next change is tried again. A file that disappears keeps the prices in use.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

from gateway.pricing.book import CompositePriceBook
from gateway.pricing.pricefile import PriceFile, PriceFileError, load_price_file

log = logging.getLogger(__name__)

Signature = tuple[int, int, int]


def _signature(path: Path) -> Signature | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class PriceFileWatch:
    def __init__(
        self, book: CompositePriceBook, path: Path, *, load: Callable[[Path], PriceFile] = load_price_file
    ) -> None:
        self.book = book
        self.path = path
        self._load = load
        self._seen = _signature(path)  # what the book was loaded from at start

    async def check(self) -> bool:
        """Reload the file if it changed since the last look; True when new prices are in use."""
        signature = _signature(self.path)
        if signature == self._seen:
            return False
        self._seen = signature
        if signature is None:
            log.warning("price file %s is gone: keeping prices %s", self.path, self.book.version)
            return False
        try:
            prices = await asyncio.to_thread(self._load, self.path)
        except PriceFileError as e:
            log.error("price file %s changed but was not taken, keeping prices %s: %s", self.path, self.book.version, e)
            return False
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
