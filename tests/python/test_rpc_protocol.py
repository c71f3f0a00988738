"""Transaction validation errors, JSON-RPC protocol errors, batches, HTTP details (CORS,
body limit), CLI flags and clean shutdown of `strobe dev`."""

from __future__ import annotations

import json
import signal
import socket
import time

import pytest
import requests
from eth_account import Account
from eth_utils import keccak
from hexbytes import HexBytes
from web3.exceptions import Web3RPCError

from conftest import ETH, GWEI, calldata_gas, derive_dev_accounts, start_node, stop_node


def q(x) -> int:
    return int(x, 16)


def assert_err(err: dict, prefix: str, code: int = -32000) -> None:
    assert err["code"] == code, err
    assert err["message"].startswith(prefix), f"expected message starting with {prefix!r}, got {err!r}"


# --------------------------------------------------------------------------------------
# eth_sendRawTransaction validation (geth's messages)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("tx_type", [0, 1, 2])
def test_invalid_chain_id(chain, fresh, tx_type):
    raw = chain.sign(fresh, {"to": Account.create().address, "value": 1, "chainId": 1}, tx_type)
    assert_err(chain.send_raw_error(raw), "invalid chain id for signer")
    assert chain.nonce(fresh.address, "pending") == 0


def test_nonce_too_low(chain, w3, fresh):
    chain.transact(fresh, {"to": Account.create().address, "value": 1, "nonce": 0})
    raw = chain.sign(fresh, {"to": Account.create().address, "value": 2, "nonce": 0})
    assert_err(chain.send_raw_error(raw), "nonce too low")
    with pytest.raises(Web3RPCError, match="nonce too low"):
        w3.eth.send_raw_transaction(raw)


def test_insufficient_funds(chain):
    poor = Account.create()
    raw = chain.sign(poor, {"to": Account.create().address, "value": 1})
    assert_err(chain.send_raw_error(raw), "insufficient funds for gas * price + value")
    # Enough for gas, not for gas + value.
    some = chain.fresh_account(1 * ETH)
    raw = chain.sign(some, {"to": Account.create().address, "value": 1 * ETH})
    assert_err(chain.send_raw_error(raw), "insufficient funds for gas * price + value")


def test_intrinsic_gas_too_low(chain, fresh):
    raw = chain.sign(fresh, {"to": Account.create().address, "value": 1, "gas": 20_999})
    assert_err(chain.send_raw_error(raw), "intrinsic gas too low")
    # Access-list costs count: 21000 is not enough for one address + one key (25300).
    to = Account.create().address
    raw = chain.sign(fresh, {"to": to, "value": 1, "gas": 25_299,
                             "accessList": [{"address": to, "storageKeys": ["0x" + "00" * 32]}]}, tx_type=1)
    assert_err(chain.send_raw_error(raw), "intrinsic gas too low")
    # Calldata costs count: 100 non-zero bytes need 21000 + 1600 (standard) ...
    data = b"\x01" * 100
    standard, floor = calldata_gas(data)
    assert (standard, floor) == (22_600, 25_000)
    raw = chain.sign(fresh, {"to": to, "data": data, "gas": standard - 1})
    assert_err(chain.send_raw_error(raw), "intrinsic gas too low")
    # ... and, under Prague (EIP-7623), at least the calldata floor 21000 + 10 * 400.
    raw = chain.sign(fresh, {"to": to, "data": data, "gas": floor - 1})
    err = chain.send_raw_error(raw)
    assert err["code"] == -32000, err
    assert err["message"].startswith(("insufficient gas for floor data gas cost", "intrinsic gas too low")), err
    # Contract creation costs 53000.
    raw = chain.sign(fresh, {"to": None, "data": b"", "gas": 52_999})
    assert_err(chain.send_raw_error(raw), "intrinsic gas too low")
    # The exact amount is fine, and is what a call to an EOA uses.
    r = chain.transact(fresh, {"to": to, "data": data, "gas": floor})
    assert q(r["status"]) == 1 and q(r["gasUsed"]) == floor


def test_exceeds_block_gas_limit(chain, node, fresh):
    limit = q(node.call("eth_getBlockByNumber", ["latest", False])["gasLimit"])
    raw = chain.sign(fresh, {"to": Account.create().address, "value": 1, "gas": limit + 1})
    assert_err(chain.send_raw_error(raw), "exceeds block gas limit")


def test_max_fee_below_base_fee(chain, fresh):
    base = chain.pending_base_fee()
    assert base > 1, "base fee must be above 1 wei for this test"
    raw = chain.sign(fresh, {"to": Account.create().address, "value": 1, "maxFeePerGas": 1,
                             "maxPriorityFeePerGas": 1})
    assert_err(chain.send_raw_error(raw), "max fee per gas less than block base fee")


def test_tip_below_minimum(chain, fresh):
    raw = chain.sign(fresh, {"to": Account.create().address, "value": 1,
                             "maxFeePerGas": 2 * chain.pending_base_fee() + GWEI, "maxPriorityFeePerGas": 0})
    assert_err(chain.send_raw_error(raw), "transaction underpriced")
    # 1 wei is the minimum and is accepted.
    r = chain.transact(fresh, {"to": Account.create().address, "value": 1,
                               "maxFeePerGas": 2 * chain.pending_base_fee() + 1, "maxPriorityFeePerGas": 1})
    assert q(r["status"]) == 1


def test_oversized_data(chain, fresh):
    to = Account.create().address
    raw = chain.sign(fresh, {"to": to, "data": b"\0" * (128 * 1024), "gas": 1_500_000})
    assert len(raw) > 128 * 1024
    assert_err(chain.send_raw_error(raw), "oversized data")
    # Just under the limit is accepted and mined.
    data = b"\0" * (127 * 1024)
    raw = chain.sign(fresh, {"to": to, "data": data, "gas": 1_500_000})
    assert len(raw) < 128 * 1024
    r = chain.wait(chain.send_raw(raw))
    assert q(r["status"]) == 1
    assert q(r["gasUsed"]) == max(calldata_gas(data))  # EIP-7623 floor dominates


def test_max_initcode_size(chain, node, fresh):
    raw = chain.sign(fresh, {"to": None, "data": b"\0" * 49_153, "gas": 1_000_000})
    assert_err(chain.send_raw_error(raw), "max initcode size exceeded")
    # Exactly 49152 bytes (all STOP) is fine: deploys empty code.
    nonce = chain.nonce(fresh.address)
    r = chain.transact(fresh, {"to": None, "data": b"\0" * 49_152, "gas": 1_000_000, "nonce": nonce})
    assert q(r["status"]) == 1
    # Init code is all STOP: gas used is the intrinsic cost, or the EIP-7623 floor if higher.
    assert q(r["gasUsed"]) == max(calldata_gas(b"\0" * 49_152, create=True))
    assert r["contractAddress"] is not None
    assert node.call("eth_getCode", [r["contractAddress"], "latest"]) == "0x"


def test_already_known(chain, fresh):
    # Nonce 1 waits in the pool behind the missing nonce 0, so it stays "known".
    raw = chain.sign(fresh, {"to": Account.create().address, "value": 1, "nonce": 1})
    chain.send_raw(raw)
    assert_err(chain.send_raw_error(raw), "already known")
    h0 = chain.send(fresh, {"to": Account.create().address, "value": 1, "nonce": 0})
    assert q(chain.wait(h0)["status"]) == 1
    assert q(chain.wait(HexBytes(keccak(raw)).to_0x_hex())["status"]) == 1


def test_resend_of_mined_tx(chain, fresh):
    raw = chain.sign(fresh, {"to": Account.create().address, "value": 1})
    chain.wait(chain.send_raw(raw))
    err = chain.send_raw_error(raw)
    assert err["code"] == -32000, err
    assert err["message"].startswith(("already known", "nonce too low")), err


def test_blob_tx_not_supported(chain, fresh):
    tx = chain.build(fresh, {"to": Account.create().address, "value": 0}, 2)
    tx.update({"type": 3, "maxFeePerBlobGas": GWEI, "blobVersionedHashes": [b"\x01" + b"\x11" * 31]})
    raw = bytes(fresh.sign_transaction(tx).raw_transaction)
    assert raw[0] == 3
    assert_err(chain.send_raw_error(raw), "transaction type not supported")


def test_garbage_raw_tx(node):
    for payload in ("0x", "0x1234", "0xc0", "0x05c0"):
        resp = node.raw("eth_sendRawTransaction", [payload])
        assert "error" in resp, (payload, resp)
        assert resp["error"]["code"] in (-32000, -32602), (payload, resp)


# --------------------------------------------------------------------------------------
# JSON-RPC protocol
# --------------------------------------------------------------------------------------


def post(node, body, **kw):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(node.url, data=data, headers={"Content-Type": "application/json", **kw.pop("headers", {})},
                         timeout=10, **kw)


def test_parse_error(node):
    r = post(node, b'{"jsonrpc":"2.0","id":1,"method":"eth_chainId"')
    assert r.status_code == 200
    j = r.json()
    assert j["error"]["code"] == -32700, j
    assert j["id"] is None


def test_invalid_request(node):
    for body in ({"jsonrpc": "2.0", "id": 7}, {"jsonrpc": "2.0", "id": 7, "method": 5}):
        j = post(node, body).json()
        assert j["error"]["code"] == -32600, (body, j)
        assert j["id"] in (7, None)


def test_method_not_found(node):
    resp = node.raw("eth_noSuchMethod", [])
    assert resp["error"]["code"] == -32601, resp


@pytest.mark.parametrize("method,params", [
    ("eth_getBalance", ["0x1234", "latest"]),
    ("eth_getBalance", ["0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266", "notablock"]),
    ("eth_getBlockByNumber", []),
    ("eth_getTransactionReceipt", ["0xzz"]),
    ("eth_sendRawTransaction", ["nothex"]),
])
def test_invalid_params(node, method, params):
    resp = node.raw(method, params)
    assert "error" in resp, resp
    assert resp["error"]["code"] == -32602, resp


def test_batch_mixed(node, chain):
    acct0 = chain.funder.address
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []},
        {"jsonrpc": "2.0", "id": "two", "method": "eth_blockNumber", "params": []},
        {"jsonrpc": "2.0", "id": 3, "method": "eth_noSuchMethod", "params": []},
        {"jsonrpc": "2.0", "id": 4, "method": "eth_getBalance", "params": ["0x1234", "latest"]},
        {"jsonrpc": "2.0", "id": 5, "method": "eth_getBalance", "params": [acct0, "latest"]},
        42,
    ]
    r = post(node, batch)
    assert r.status_code == 200
    out = r.json()
    assert isinstance(out, list), out
    assert len(out) == len(batch), out
    by_id = {json.dumps(x.get("id")): x for x in out if x.get("id") is not None}
    assert by_id["1"]["result"] == node.call("eth_chainId")
    bn_now = q(node.call("eth_blockNumber"))
    assert bn_now - 2 <= q(by_id['"two"']["result"]) <= bn_now
    assert by_id["3"]["error"]["code"] == -32601
    assert by_id["4"]["error"]["code"] == -32602
    assert q(by_id["5"]["result"]) > 0
    nulls = [x for x in out if x.get("id") is None]
    assert len(nulls) == 1 and nulls[0]["error"]["code"] == -32600, out


def test_batch_with_notification(node):
    batch = [
        {"jsonrpc": "2.0", "method": "eth_chainId", "params": []},  # notification: no response
        {"jsonrpc": "2.0", "id": 9, "method": "eth_chainId", "params": []},
    ]
    out = post(node, batch).json()
    assert [x["id"] for x in out] == [9], out


def test_empty_batch(node):
    j = post(node, []).json()
    err = j[0]["error"] if isinstance(j, list) and j else j.get("error") if isinstance(j, dict) else None
    assert err is not None and err["code"] == -32600, j


# --------------------------------------------------------------------------------------
# HTTP: CORS, body limit
# --------------------------------------------------------------------------------------


def test_cors(node):
    r = requests.options(node.url, headers={"Origin": "http://example.test",
                                            "Access-Control-Request-Method": "POST",
                                            "Access-Control-Request-Headers": "content-type"}, timeout=5)
    assert r.status_code == 204, (r.status_code, r.text)
    assert r.headers.get("Access-Control-Allow-Origin") == "*"
    if "Access-Control-Allow-Methods" in r.headers:
        assert "POST" in r.headers["Access-Control-Allow-Methods"].upper()
    r = post(node, {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []},
             headers={"Origin": "http://example.test"})
    assert r.status_code == 200
    assert r.headers.get("Access-Control-Allow-Origin") == "*"
    assert r.headers.get("Content-Type", "").startswith("application/json")


def _raw_http_post(port: int, body: bytes) -> bytes:
    """POST with a raw socket; tolerate the server closing while we still send."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        head = (f"POST / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        try:
            s.sendall(head)
            for i in range(0, len(body), 1 << 16):
                s.sendall(body[i:i + (1 << 16)])
        except (BrokenPipeError, ConnectionResetError):
            pass
        chunks = []
        try:
            while True:
                c = s.recv(65536)
                if not c:
                    break
                chunks.append(c)
        except (ConnectionResetError, socket.timeout):
            pass
        return b"".join(chunks)
    finally:
        s.close()


def test_body_limit(node):
    big = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId",
                      "params": ["0x" + "00" * (3 * 1024 * 1024)]}).encode()
    assert len(big) > 5 * 1024 * 1024
    resp = _raw_http_post(node.port, big)
    assert resp.startswith(b"HTTP/1.1 413"), resp[:200]
    # Below the limit: an ordinary JSON-RPC answer.
    ok = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId",
                     "params": ["0x" + "00" * (2 * 1024 * 1024)]}).encode()
    assert len(ok) < 5 * 1024 * 1024
    r = requests.post(node.url, data=ok, headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 200
    assert "jsonrpc" in r.json()
    # The server still works.
    assert node.call("eth_chainId")


# --------------------------------------------------------------------------------------
# CLI flags and shutdown (own nodes)
# --------------------------------------------------------------------------------------


def test_cli_flags(tmp_path):
    mnemonic = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"
    n = start_node(["--chain-id", "777", "--accounts", "3", "--balance", "5", "--gas-limit", "20000000",
                    "--mnemonic", mnemonic, "--block-time", "200ms"])
    try:
        assert q(n.call("eth_chainId")) == 777
        accts = derive_dev_accounts(4, mnemonic)
        for a in accts[:3]:
            assert q(n.call("eth_getBalance", [a.address, "latest"])) == 5 * ETH
        assert q(n.call("eth_getBalance", [accts[3].address, "latest"])) == 0
        assert q(n.call("eth_getBalance", [derive_dev_accounts(1)[0].address, "latest"])) == 0
        assert q(n.call("eth_getBlockByNumber", ["latest", False])["gasLimit"]) == 20_000_000
        start = q(n.call("eth_blockNumber"))
        time.sleep(1.0)
        sealed = q(n.call("eth_blockNumber")) - start
        assert 3 <= sealed <= 7, f"--block-time 200ms sealed {sealed} blocks in 1 s"
        # A tx signed for chain 777 works there.
        a0 = accts[0]
        tx = {"to": accts[1].address, "value": 1, "gas": 21_000, "nonce": 0, "chainId": 777,
              "maxFeePerGas": 10 * GWEI, "maxPriorityFeePerGas": 1}
        raw = bytes(a0.sign_transaction(tx).raw_transaction)
        rc = n.call("eth_sendRawTransactionSync", ["0x" + raw.hex()])
        assert q(rc["status"]) == 1
    finally:
        assert stop_node(n, signal.SIGTERM, wait=2.0) is not None, "no exit within 2 s of SIGTERM"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_clean_shutdown(sig):
    n = start_node()
    # Some activity first.
    a0 = derive_dev_accounts(1)[0]
    raw = bytes(a0.sign_transaction({"to": Account.create().address, "value": 1, "gas": 21_000, "nonce": 0,
                                     "chainId": 31337, "maxFeePerGas": 10 * GWEI,
                                     "maxPriorityFeePerGas": 1}).raw_transaction)
    n.call("eth_sendRawTransaction", ["0x" + raw.hex()])
    time.sleep(0.05)
    t0 = time.monotonic()
    n.proc.send_signal(sig)
    try:
        code = n.proc.wait(timeout=1.0 if sig == signal.SIGINT else 2.0)
    except Exception:
        n.proc.kill()
        n.proc.wait()
        pytest.fail(f"strobe did not exit within the limit after {sig.name}\n{n.log_tail()}")
    elapsed = time.monotonic() - t0
    if sig == signal.SIGINT:
        assert code == 0, f"exit code {code} after SIGINT\n{n.log_tail()}"
    else:
        # Exiting 0 or dying by the signal are both acceptable for SIGTERM.
        assert code in (0, -signal.SIGTERM), f"exit code {code} after SIGTERM\n{n.log_tail()}"
    # The port is released.
    with pytest.raises(requests.ConnectionError):
        requests.post(n.url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}, timeout=1)
    assert elapsed < 2.0
