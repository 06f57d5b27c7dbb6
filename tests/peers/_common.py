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


def peer_app(peer, routes: list[web.RouteDef], on_not_found) -> web.Application:
    """An app serving a peer's protocol `routes`, the control routes every
    peer has (`/_peer/faults`, `/_peer/reset`, `/_peer/requests`), and
    `on_not_found` for anything else, in the protocol's own error shape."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.add_routes(routes)
    app.router.add_post("/_peer/faults", peer.post_faults)
    app.router.add_post("/_peer/reset", peer.post_reset)
    app.router.add_get("/_peer/requests", peer.get_requests)
    app.router.add_route("*", "/{tail:.*}", on_not_found)
    return app
