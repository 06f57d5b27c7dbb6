"""Fixtures: one fake OpenAI peer and one gateway per test session.

Tests that need a special gateway (no auth, a tiny body limit, fresh
failover state) start their own short-lived one with ``gateway_factory``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import openai
import pytest

import support
from support import Gateway, PeerProc


@pytest.fixture(scope="session")
def peer() -> Iterator[PeerProc]:
    with support.running(support.start_peer) as proc:
        yield proc


@pytest.fixture(scope="session")
def gateway(peer: PeerProc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("gateway")
    with support.running_gateway(tmp, support.gateway_config(tmp, peer.url)) as gw:
        yield gw


@pytest.fixture
def clean_peer(peer: PeerProc) -> Iterator[PeerProc]:
    """The peer with no faults and an empty request log, before and after."""
    peer.reset()
    yield peer
    peer.reset()


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    """Start extra, short-lived gateways; all are stopped after the test."""
    started: list[Gateway] = []
    counter = [0]

    def make(config_text: str | None = None, peer_url: str | None = None, env: dict | None = None, **kw) -> Gateway:
        counter[0] += 1
        d = tmp_path / f"gw{counter[0]}"
        text = config_text if config_text is not None else support.gateway_config(d, peer_url, **kw)
        gw = support.started(lambda: support.start_gateway(d, text, env=env))
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.cleanup()


@pytest.fixture(scope="session")
def client(gateway: Gateway) -> openai.OpenAI:
    return support.make_client(gateway.v1)


@pytest.fixture
def http(gateway: Gateway):
    with gateway.http() as c:
        yield c
