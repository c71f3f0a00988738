"""Fixtures for the strobe client test suite (web3.py + pytest).

One `strobe dev` node is started per test session on a free loopback port and stopped
with SIGTERM at the end (it must exit within ~2 s). Tests talk to it through web3.py and
through a raw JSON-RPC helper (`rpc`) that returns the full response object, so error codes
and messages can be checked exactly.

Run (from the repository root):
  cargo build                                   # target/debug/strobe
  (cd tests/js && npm ci)                       # solc-js 0.8.28 (the fixture runs it if missing)
  pip install -r tests/python/requirements.txt
  python -m pytest tests/python -q

Environment:
  STROBE_BIN          path of the strobe binary (default: <repo>/target/debug/strobe)
  STROBE_START_TIMEOUT seconds to wait for the node to answer eth_chainId (default 60)
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytest
import requests
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address
from hexbytes import HexBytes
from web3 import Web3

REPO_ROOT = Path(__file__).resolve().parents[2]
JS_DIR = REPO_ROOT / "tests" / "js"
CONTRACTS_DIR = REPO_ROOT / "tests" / "contracts"

DEV_MNEMONIC = "test test test test test test test test test test test junk"
# Well-known first account of the mnemonic above (same as anvil / hardhat).
DEV_ACCOUNT0_ADDRESS = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
DEFAULT_CHAIN_ID = 31337
DEFAULT_ACCOUNTS = 10
DEFAULT_BALANCE_ETH = 10_000
GWEI = 10**9
ETH = 10**18

Account.enable_unaudited_hdwallet_features()


def strobe_bin() -> Path:
    return Path(os.environ.get("STROBE_BIN", str(REPO_ROOT / "target" / "debug" / "strobe")))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def derive_dev_accounts(n: int = DEFAULT_ACCOUNTS, mnemonic: str = DEV_MNEMONIC) -> list[LocalAccount]:
    return [
        Account.from_mnemonic(mnemonic, account_path=f"m/44'/60'/0'/0/{i}") for i in range(n)
    ]


# --------------------------------------------------------------------------------------
# Node process management
# --------------------------------------------------------------------------------------


class RpcError(Exception):
    def __init__(self, error: dict):
        super().__init__(f"JSON-RPC error {error.get('code')}: {error.get('message')} (data={error.get('data')!r})")
        self.error = error
        self.code = error.get("code")
        self.message = error.get("message")
        self.data = error.get("data")


@dataclass
class Node:
    proc: subprocess.Popen
    port: int
    log_path: Path
    url: str = ""
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self.url = f"http://127.0.0.1:{self.port}"

    # Raw JSON-RPC: returns the whole response object ({"jsonrpc","id","result"|"error"}).
    def raw(self, method: str, params: Optional[list] = None, timeout: float = 30) -> dict:
        req_id = next(self._ids)
        body = {"jsonrpc": "2.0", "id": req_id, "method": method, "params": params if params is not None else []}
        r = requests.post(self.url, json=body, timeout=timeout)
        assert r.status_code == 200, f"{method}: HTTP {r.status_code}: {r.text[:500]}"
        resp = r.json()
        assert isinstance(resp, dict), f"{method}: non-object response {resp!r}"
        assert resp.get("jsonrpc") == "2.0", f"{method}: bad jsonrpc field in {resp!r}"
        assert resp.get("id") == req_id, f"{method}: id mismatch in {resp!r}"
        assert ("result" in resp) != ("error" in resp), f"{method}: need exactly one of result/error: {resp!r}"
        return resp

    # Returns the result or raises RpcError.
    def call(self, method: str, params: Optional[list] = None, timeout: float = 30) -> Any:
        resp = self.raw(method, params, timeout=timeout)
        if "error" in resp:
            raise RpcError(resp["error"])
        return resp["result"]

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return "<no log>"


def start_node(extra_args: Optional[list[str]] = None, timeout: Optional[float] = None) -> Node:
    binary = strobe_bin()
    if not binary.exists():
        pytest.fail(
            f"strobe binary not found at {binary} (build it with `cargo build` or set STROBE_BIN)",
            pytrace=False,
        )
    if timeout is None:
        timeout = float(os.environ.get("STROBE_START_TIMEOUT", "60"))
    port = free_port()
    log_fd, log_name = tempfile.mkstemp(prefix=f"strobe-{port}-", suffix=".log")
    # Every mini-block with a transaction runs through Block-STM (two workers), so the whole
    # client-library suite doubles as an end-to-end check of parallel execution.
    exec_args = ["--exec-threads", "2", "--parallel-min-txs", "1"]
    args = [str(binary), "dev", "--port", str(port), "--host", "127.0.0.1"] + exec_args + (extra_args or [])
    proc = subprocess.Popen(args, stdout=log_fd, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    os.close(log_fd)
    node = Node(proc=proc, port=port, log_path=Path(log_name))
    deadline = time.monotonic() + timeout
    last_err: Any = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(
                f"strobe exited early with code {proc.returncode}: {args}\n--- log ---\n{node.log_tail()}",
                pytrace=False,
            )
        try:
            r = requests.post(
                node.url,
                json={"jsonrpc": "2.0", "id": 0, "method": "eth_chainId", "params": []},
                timeout=1,
            )
            if r.status_code == 200 and "result" in r.json():
                return node
            last_err = r.text
        except (requests.RequestException, ValueError) as e:
            last_err = e
        time.sleep(0.05)
    stop_node(node, sig=signal.SIGKILL)
    pytest.fail(
        f"strobe did not answer eth_chainId within {timeout}s (last: {last_err!r})\n--- log ---\n{node.log_tail()}",
        pytrace=False,
    )


def stop_node(node: Node, sig: int = signal.SIGTERM, wait: float = 2.0) -> Optional[int]:
    """Send `sig`; return the exit code, or None if it had to be killed."""
    if node.proc.poll() is not None:
        return node.proc.returncode
    node.proc.send_signal(sig)
    try:
        return node.proc.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        node.proc.kill()
        node.proc.wait(timeout=5)
        return None


# --------------------------------------------------------------------------------------
# Transaction helpers
# --------------------------------------------------------------------------------------


class Chain:
    """Convenience wrapper around the session node: signing, sending, waiting."""

    def __init__(self, node: Node, w3: Web3, chain_id: int, funder: LocalAccount):
        self.node = node
        self.w3 = w3
        self.chain_id = chain_id
        self.funder = funder

    # ---- reads ----
    def pending_base_fee(self) -> int:
        blk = self.node.call("eth_getBlockByNumber", ["pending", False])
        if blk and blk.get("baseFeePerGas") is not None:
            return int(blk["baseFeePerGas"], 16)
        blk = self.node.call("eth_getBlockByNumber", ["latest", False])
        return int(blk["baseFeePerGas"], 16)

    def balance(self, addr: str, block: str = "latest") -> int:
        return int(self.node.call("eth_getBalance", [addr, block]), 16)

    def nonce(self, addr: str, block: str = "pending") -> int:
        return int(self.node.call("eth_getTransactionCount", [addr, block]), 16)

    def block_number(self) -> int:
        return int(self.node.call("eth_blockNumber"), 16)

    # ---- building / signing ----
    def fees(self, tip: int = GWEI) -> dict:
        base = self.pending_base_fee()
        return {"maxFeePerGas": 2 * base + tip, "maxPriorityFeePerGas": tip}

    def build(self, acct: LocalAccount, tx: dict, tx_type: int = 2) -> dict:
        """Fill in the defaults for a transaction of `tx_type` (0 = legacy EIP-155,
        -1 = legacy pre-EIP-155, 1 = EIP-2930, 2 = EIP-1559, 4 = EIP-7702)."""
        t = dict(tx)
        if "to" in t and t["to"] is None:
            del t["to"]  # contract creation
        t.setdefault("nonce", self.nonce(acct.address))
        t.setdefault("value", 0)
        t.setdefault("data", b"")
        t.setdefault("gas", 21_000)
        if tx_type in (0, -1, 1):
            if "gasPrice" not in t:
                t["gasPrice"] = 2 * self.pending_base_fee() + GWEI
            if tx_type != -1:
                t.setdefault("chainId", self.chain_id)
            if tx_type == 1:
                t["type"] = 1
                t.setdefault("accessList", [])
        elif tx_type in (2, 4):
            t["type"] = tx_type
            t.setdefault("chainId", self.chain_id)
            if "maxFeePerGas" not in t or "maxPriorityFeePerGas" not in t:
                f = self.fees(t.get("maxPriorityFeePerGas", GWEI))
                t.setdefault("maxPriorityFeePerGas", f["maxPriorityFeePerGas"])
                t.setdefault("maxFeePerGas", f["maxFeePerGas"])
            t.setdefault("accessList", [])
        else:
            raise ValueError(f"unsupported tx_type {tx_type}")
        return t

    def sign(self, acct: LocalAccount, tx: dict, tx_type: int = 2) -> bytes:
        t = self.build(acct, tx, tx_type)
        return bytes(acct.sign_transaction(t).raw_transaction)

    def send_raw(self, raw: bytes) -> str:
        h = self.node.call("eth_sendRawTransaction", ["0x" + raw.hex()])
        assert HexBytes(h) == HexBytes(keccak(raw)), f"returned hash {h} != keccak(raw)"
        return h

    def send_raw_error(self, raw: bytes) -> dict:
        resp = self.node.raw("eth_sendRawTransaction", ["0x" + raw.hex()])
        assert "error" in resp, f"expected an error, got result {resp.get('result')!r}"
        return resp["error"]

    def send(self, acct: LocalAccount, tx: dict, tx_type: int = 2) -> str:
        return self.send_raw(self.sign(acct, tx, tx_type))

    def _poll_receipt(self, tx_hash: str, timeout: float, ready, what: str, pause: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            r = self.node.call("eth_getTransactionReceipt", [tx_hash])
            if r is not None and ready(r):
                return r
            if time.monotonic() > deadline:
                raise AssertionError(f"receipt for {tx_hash} not {what} after {timeout}s: {r}")
            time.sleep(pause)

    def wait(self, tx_hash: str, timeout: float = 10) -> dict:
        """Poll eth_getTransactionReceipt until it appears; returns the raw JSON receipt."""
        return self._poll_receipt(tx_hash, timeout, lambda r: True, "available", 0.01)

    def wait_sealed(self, tx_hash: str, timeout: float = 5) -> dict:
        """Poll until the receipt has a non-null blockHash (its EVM block was sealed)."""
        return self._poll_receipt(tx_hash, timeout, lambda r: r.get("blockHash") is not None, "sealed", 0.05)

    def wait_block_sealed(self, number: int, timeout: float = 5) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            if self.block_number() >= number:
                blk = self.node.call("eth_getBlockByNumber", [hex(number), False])
                assert blk is not None, f"eth_blockNumber >= {number} but block {number} not found"
                return blk
            if time.monotonic() > deadline:
                raise AssertionError(f"block {number} not sealed after {timeout}s")
            time.sleep(0.05)

    def transact(self, acct: LocalAccount, tx: dict, tx_type: int = 2) -> dict:
        return self.wait(self.send(acct, tx, tx_type))

    def fund(self, to: str, amount: int = 100 * ETH) -> dict:
        r = self.transact(self.funder, {"to": to, "value": amount})
        assert int(r["status"], 16) == 1, r
        return r

    def fresh_account(self, amount: int = 100 * ETH) -> LocalAccount:
        acct = Account.create()
        if amount:
            self.fund(acct.address, amount)
        return acct


def contract_address(sender: str, nonce: int) -> str:
    import rlp

    return to_checksum_address(keccak(rlp.encode([HexBytes(sender), nonce]))[12:])


# --------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def node():
    n = start_node()
    yield n
    code = stop_node(n, signal.SIGTERM, wait=2.0)
    if code is None:
        pytest.fail(f"strobe did not exit within 2 s of SIGTERM\n--- log ---\n{n.log_tail()}", pytrace=False)


@pytest.fixture(scope="session")
def rpc(node):
    """rpc(method, params) -> full JSON-RPC response dict."""
    return node.raw


@pytest.fixture(scope="session")
def w3(node) -> Web3:
    w = Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 30}))
    assert w.is_connected()
    return w


@pytest.fixture(scope="session")
def dev_accounts() -> list[LocalAccount]:
    accts = derive_dev_accounts()
    assert accts[0].address == DEV_ACCOUNT0_ADDRESS
    return accts


@pytest.fixture(scope="session")
def chain(node, w3, dev_accounts) -> Chain:
    return Chain(node, w3, int(node.call("eth_chainId"), 16), dev_accounts[0])


@pytest.fixture
def fresh(chain) -> LocalAccount:
    """A brand-new account funded with 100 ETH from dev account 0."""
    return chain.fresh_account()


def _ensure_solc() -> None:
    if (JS_DIR / "node_modules" / "solc" / "package.json").exists():
        return
    cmd = ["npm", "ci"] if (JS_DIR / "package-lock.json").exists() else ["npm", "install"]
    subprocess.run(cmd + ["--no-audit", "--no-fund"], cwd=JS_DIR, check=True, capture_output=True, timeout=300)


@pytest.fixture(scope="session")
def compiled() -> dict:
    """solc-js output for tests/contracts/TestToken.sol, compiled in this session."""
    _ensure_solc()
    out = subprocess.run(
        ["node", str(JS_DIR / "compile.js"), str(CONTRACTS_DIR / "TestToken.sol")],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    data = json.loads(out.stdout)
    assert "TestToken" in data, data.keys()
    assert data["TestToken"]["bytecode"].startswith("0x") and len(data["TestToken"]["bytecode"]) > 100
    return data


TOKEN_SUPPLY = 1_000_000 * 10**18


@dataclass
class Token:
    address: str
    contract: Any
    deployer: LocalAccount
    deploy_receipt: dict
    abi: list
    deployed_bytecode: str


@pytest.fixture(scope="session")
def token(chain, w3, compiled) -> Token:
    """TestToken deployed by a fresh account (raw signed create transaction)."""
    deployer = chain.fresh_account(1000 * ETH)
    art = compiled["TestToken"]
    factory = w3.eth.contract(abi=art["abi"], bytecode=art["bytecode"])
    data = factory.constructor("Test Token", "TST", TOKEN_SUPPLY).data_in_transaction
    nonce = chain.nonce(deployer.address)
    gas = int(
        chain.node.call("eth_estimateGas", [{"from": deployer.address, "data": data}]), 16
    )
    receipt = chain.transact(deployer, {"to": None, "data": data, "gas": gas + gas // 5, "nonce": nonce})
    assert int(receipt["status"], 16) == 1, receipt
    expected = contract_address(deployer.address, nonce)
    assert receipt["contractAddress"] is not None
    assert to_checksum_address(receipt["contractAddress"]) == expected
    contract = w3.eth.contract(address=expected, abi=art["abi"])
    return Token(expected, contract, deployer, receipt, art["abi"], art.get("deployedBytecode", ""))


# Transaction kinds exercised by the typed-transfer tests. -1 = legacy without EIP-155.
TX_KINDS = {
    "legacy_pre155": -1,
    "legacy_eip155": 0,
    "eip2930": 1,
    "eip1559": 2,
    "eip7702": 4,
}


@dataclass
class TypedTransfer:
    kind: str
    tx_type: int
    sender: LocalAccount
    recipient: str
    value: int
    tx: dict  # the signed fields
    signed: Any  # eth_account SignedTransaction
    tx_hash: str
    sender_before: int
    expected_gas_used: int
    authority: Optional[LocalAccount] = None
    receipt: Optional[dict] = None  # sealed receipt (blockHash set)


@pytest.fixture(scope="session")
def typed_transfers(chain, token) -> dict[str, TypedTransfer]:
    """One plain value transfer of every supported tx type, each from its own fresh sender,
    all sent back to back, then waited for until their EVM block(s) are sealed."""
    out: dict[str, TypedTransfer] = {}
    senders = {k: chain.fresh_account(10 * ETH) for k in TX_KINDS}
    for i, (kind, tx_type) in enumerate(TX_KINDS.items()):
        sender = senders[kind]
        recipient = Account.create().address
        value = 10**15 + 1000 * i + 7
        tx: dict = {"to": recipient, "value": value, "nonce": 0}
        expected_gas = 21_000
        authority = None
        if tx_type == 1:
            # 1 address + 1 storage key: 21000 + 2400 + 1900 (EIP-2930).
            tx["accessList"] = [{"address": recipient, "storageKeys": ["0x" + "00" * 31 + "01"]}]
            tx["gas"] = 40_000
            expected_gas = 21_000 + 2_400 + 1_900
        if tx_type == 4:
            # Authority is a brand-new (empty) account: 25000 per authorization, no refund.
            authority = Account.create()
            auth = Account.sign_authorization(
                {"chainId": chain.chain_id, "address": token.address, "nonce": 0}, authority.key
            )
            tx["authorizationList"] = [auth]
            tx["gas"] = 80_000
            expected_gas = 21_000 + 25_000
        before = chain.balance(sender.address)
        built = chain.build(sender, tx, tx_type)
        signed = sender.sign_transaction(built)
        h = chain.send_raw(bytes(signed.raw_transaction))
        out[kind] = TypedTransfer(kind, tx_type, sender, recipient, value, built, signed, h, before,
                                  expected_gas, authority)
    for t in out.values():
        chain.wait(t.tx_hash)
    for t in out.values():
        t.receipt = chain.wait_sealed(t.tx_hash)
    return out


def calldata_gas(data: bytes, create: bool = False) -> tuple[int, int]:
    """(standard intrinsic gas, EIP-7623 floor) for a tx without access list / authorizations
    under Prague rules: 21000 (+32000 and 2 per initcode word for a create), 4/16 per
    zero/non-zero calldata byte; floor = 21000 + 10 * (zero + 4 * non-zero)."""
    zeros = data.count(0)
    nonzeros = len(data) - zeros
    standard = 21_000 + 4 * zeros + 16 * nonzeros
    if create:
        standard += 32_000 + 2 * ((len(data) + 31) // 32)
    floor = 21_000 + 10 * (zeros + 4 * nonzeros)
    return standard, floor
