"""What every test peer shares: reading comma lists from its arguments and
serving an aiohttp app on 127.0.0.1, announcing the bound address on stdout
the way the gateway does (``listening on http://ADDR``)."""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web


def split_list(text: str) -> list[str]:
    """``"a, b,,c"`` → ``["a", "b", "c"]``."""
    return [part.strip() for part in text.split(",") if part.strip()]


async def serve(app: web.Application, host: str, port: int) -> None:
    """Serves `app` until the process is stopped; port 0 picks a free one."""
    runner = web.AppRunner(app, access_log=None, handle_signals=True, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    sys.stdout.write(f"listening on http://{host}:{bound}\n")
    sys.stdout.flush()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
