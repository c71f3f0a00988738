"""Standard eth_* methods beyond the core flows, and a bounded burst of transactions
sent as one JSON-RPC batch."""

from __future__ import annotations

import json

import requests
from eth_account import Account
from eth_utils import keccak
from hexbytes import HexBytes

from conftest import ETH


def q(x) -> int:
    return int(x, 16)


def test_misc_standard_methods(node, chain):
    assert node.call("net_version") == str(chain.chain_id)
    assert node.call("eth_syncing") is False
    cv = node.call("web3_clientVersion")
    assert isinstance(cv, str) and cv
    tip = q(node.call("eth_maxPriorityFeePerGas"))
    assert tip >= 1
    gp = q(node.call("eth_gasPrice"))
    assert gp >= chain.pending_base_fee()


def test_block_transaction_index_methods(node, typed_transfers):
    rc = typed_transfers["eip1559"].receipt
    bn, bh, idx = rc["blockNumber"], rc["blockHash"], rc["transactionIndex"]
    blk = node.call("eth_getBlockByNumber", [bn, False])
    count = len(blk["transactions"])
    assert q(node.call("eth_getBlockTransactionCountByNumber", [bn])) == count
    assert q(node.call("eth_getBlockTransactionCountByHash", [bh])) == count
    by_num = node.call("eth_getTransactionByBlockNumberAndIndex", [bn, idx])
    by_hash = node.call("eth_getTransactionByBlockHashAndIndex", [bh, idx])
    assert by_num["hash"] == by_hash["hash"] == rc["transactionHash"]
    assert node.call("eth_getTransactionByBlockNumberAndIndex", [bn, hex(count)]) is None


def test_block_hash_param_eip1898(node, chain):
    acct = Account.create()
    rc = chain.wait_sealed(chain.fund(acct.address, 2 * ETH)["transactionHash"])
    n = q(rc["blockNumber"])
    parent = node.call("eth_getBlockByNumber", [hex(n - 1), False])
    assert q(node.call("eth_getBalance", [acct.address, {"blockHash": rc["blockHash"]}])) == 2 * ETH
    assert q(node.call("eth_getBalance", [acct.address, {"blockHash": parent["hash"]}])) == 0
    assert q(node.call("eth_getBalance", [acct.address, {"blockNumber": hex(n)}])) == 2 * ETH
    resp = node.raw("eth_getBalance", [acct.address, {"blockHash": "0x" + "12" * 32}])
    assert "error" in resp, resp


def test_burst_as_one_batch(node, chain):
    """200 transfers from 5 senders in one HTTP batch: all accepted, all mined in nonce order,
    balances and receipts consistent."""
    senders = [chain.fresh_account(5 * ETH) for _ in range(5)]
    recipient = Account.create().address
    per_sender = 40
    fees = chain.fees()
    raws = []
    for s in senders:
        for nonce in range(per_sender):
            raws.append(chain.sign(s, {"to": recipient, "value": 1000 + nonce, "nonce": nonce, **fees}))
    batch = [{"jsonrpc": "2.0", "id": i, "method": "eth_sendRawTransaction", "params": ["0x" + r.hex()]}
             for i, r in enumerate(raws)]
    resp = requests.post(node.url, data=json.dumps(batch), headers={"Content-Type": "application/json"}, timeout=30)
    assert resp.status_code == 200
    out = {x["id"]: x for x in resp.json()}
    assert len(out) == len(raws)
    for i, r in enumerate(raws):
        assert "result" in out[i], out[i]
        assert HexBytes(out[i]["result"]) == HexBytes(keccak(r))
    receipts = [chain.wait(out[i]["result"], timeout=20) for i in range(len(raws))]
    assert all(q(r["status"]) == 1 for r in receipts)
    assert chain.balance(recipient) == len(senders) * sum(1000 + n for n in range(per_sender))
    for k, s in enumerate(senders):
        assert chain.nonce(s.address, "latest") == per_sender
        mine = receipts[k * per_sender:(k + 1) * per_sender]
        pos = [(q(r["blockNumber"]), q(r["transactionIndex"])) for r in mine]
        assert pos == sorted(pos) and len(set(pos)) == len(pos), "nonce order not kept"
    # Block-level consistency once everything is sealed.
    last = chain.wait_sealed(receipts[-1]["transactionHash"])
    blocks = sorted({q(r["blockNumber"]) for r in receipts})
    chain.wait_block_sealed(max(blocks))
    for b in blocks:
        blk = node.call("eth_getBlockByNumber", [hex(b), False])
        brs = node.call("eth_getBlockReceipts", [hex(b)])
        assert [r["transactionHash"] for r in brs] == blk["transactions"]
        assert [q(r["transactionIndex"]) for r in brs] == list(range(len(brs)))
        assert q(brs[-1]["cumulativeGasUsed"]) == q(blk["gasUsed"]) if brs else q(blk["gasUsed"]) == 0
    assert last["blockHash"] is not None
