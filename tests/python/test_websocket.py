"""WebSocket subscriptions observed from web3.py's AsyncWeb3 + WebSocketProvider.

newHeads (with miniBlockCount), logs, newPendingTransactions, and strobe's real-time streams
miniBlocks (MegaETH's fields, one per tick) and stateChanges (checked against eth_getBalance and
eth_getStorageAt over HTTP).
"""

from __future__ import annotations

import asyncio
import time

import pytest
from web3 import AsyncWeb3, WebSocketProvider

from conftest import ETH, start_node, stop_node


@pytest.fixture(scope="module")
def epoll_node():
    """A second node serving on the epoll fallback, so the subscriptions run on both loops."""
    n = start_node(["--net-backend", "epoll"])
    yield n
    stop_node(n)


def ws_url(node) -> str:
    return node.url.replace("http://", "ws://")


async def collect(w3, want, timeout: float = 10.0) -> list:
    """Reads subscription messages until `want(messages)` is true."""
    got = []
    deadline = time.monotonic() + timeout

    async def loop():
        async for msg in w3.socket.process_subscriptions():
            got.append(msg)
            if want(got):
                return

    await asyncio.wait_for(loop(), max(0.1, deadline - time.monotonic()))
    return got


def hexstr(v) -> str:
    """A hash as lower-case 0x-hex, whether web3.py handed back bytes or a string."""
    return (v if isinstance(v, str) else "0x" + bytes(v).hex()).lower()


def q(v) -> int:
    return v if isinstance(v, int) else int(v, 16)


@pytest.mark.parametrize("backend", ["uring", "epoll"])
def test_mini_blocks_arrive_every_tick_with_megaeth_fields(request, backend):
    node = request.getfixturevalue("node" if backend == "uring" else "epoll_node")

    async def run():
        async with AsyncWeb3(WebSocketProvider(ws_url(node))) as w3:
            assert await w3.eth.chain_id == 31337
            sub = await w3.eth.subscribe("miniBlocks")
            msgs = await collect(w3, lambda m: len(m) >= 30)
            results = [m["result"] for m in msgs if m["subscription"] == sub]
            assert len(results) >= 30
            for r in results:
                for f in ("block_number", "block_timestamp", "index", "mini_block_number",
                          "mini_block_timestamp", "gas_used", "transactions", "receipts"):
                    assert f in r, f
            numbers = [q(r["mini_block_number"]) for r in results]
            assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), "one per tick, none skipped"
            stamps = [q(r["mini_block_timestamp"]) for r in results]
            gaps = sorted(b - a for a, b in zip(stamps, stamps[1:]))
            median_us = gaps[len(gaps) // 2]
            assert 5_000 <= median_us <= 20_000, f"median mini-block gap {median_us} us at a 10 ms tick"
            assert await w3.eth.unsubscribe(sub)

    asyncio.run(run())


def test_new_heads_logs_pending_and_state_changes(node, chain, token):
    bob = chain.fresh_account(0).address

    async def run():
        async with AsyncWeb3(WebSocketProvider(ws_url(node))) as w3:
            heads = await w3.eth.subscribe("newHeads")
            logs = await w3.eth.subscribe("logs", {"address": token.address})
            pending = await w3.eth.subscribe("newPendingTransactions")
            changes = await w3.eth.subscribe("stateChanges", [bob, token.address])

            data = token.contract.encode_abi("transfer", args=[bob, 4321])
            tx_hash = await asyncio.to_thread(
                chain.send, token.deployer, {"to": token.address, "data": data, "gas": 100_000}
            )
            receipt = await asyncio.to_thread(chain.wait, tx_hash)
            assert q(receipt["status"]) == 1
            await asyncio.to_thread(chain.fund, bob, ETH)

            def done(msgs):
                subs = {m["subscription"] for m in msgs}
                bob_balance = any(
                    m["subscription"] == changes and m["result"]["address"].lower() == bob.lower()
                    for m in msgs
                )
                return {heads, logs, pending} <= subs and bob_balance

            msgs = await collect(w3, done, timeout=15)
            by = lambda s: [m["result"] for m in msgs if m["subscription"] == s]  # noqa: E731

            head = by(heads)[0]
            block = await w3.eth.get_block(q(head["number"]))
            assert head["hash"] == block["hash"]
            assert "miniBlockCount" in head

            log = by(logs)[0]
            assert log["address"].lower() == token.address.lower()
            assert hexstr(log["transactionHash"]) == tx_hash.lower()
            assert int.from_bytes(bytes(log["data"]), "big") == 4321

            assert tx_hash.lower() in [hexstr(h) for h in by(pending)]

            token_change = next(r for r in by(changes) if r["address"].lower() == token.address.lower())
            assert len(token_change["storage"]) == 2
            for slot, value in token_change["storage"].items():
                on_chain = await w3.eth.get_storage_at(token.address, int(slot, 16))
                assert int.from_bytes(on_chain, "big") == int(value, 16)
            bob_change = next(r for r in by(changes) if r["address"].lower() == bob.lower())
            assert int(bob_change["balance"], 16) == await w3.eth.get_balance(bob) == ETH

    asyncio.run(run())
