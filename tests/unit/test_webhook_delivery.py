"""A deliverer waiting on its feed and woken for a replay (server/delivery.py), without a
node: the page it waited for is given up on, and it goes on at once."""

from __future__ import annotations

import asyncio
from typing import Any

from shoal.engine import Webhook
from shoal.engine.webhooks import new_secret
from shoal.server.delivery import Deliverer
from shoal.settings import Settings


class Feed:
    """An engine whose feed never brings a change (a long poll that waits out its wait)."""

    settings = Settings()

    def __init__(self) -> None:
        self.asked = asyncio.Event()
        self.cancelled = False

    async def changes(self, *args: Any, **kwargs: Any) -> Any:
        self.asked.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled = True
            raise


def test_a_wake_gives_up_the_page_it_waited_for() -> None:
    async def go() -> None:
        feed = Feed()
        hook = Webhook("wh_1", "db", "main", "http://127.0.0.1:9/", None, None, 10, 3, 60.0,
                       0.0, "life", new_secret())
        deliverer = Deliverer(feed, hook)
        waiting = asyncio.ensure_future(deliverer._page("cursor", 25.0))
        await feed.asked.wait()
        deliverer.wake.set()  # a replay was asked for
        assert await asyncio.wait_for(waiting, 1.0) is None
        await asyncio.sleep(0)
        assert feed.cancelled

    asyncio.run(go())
