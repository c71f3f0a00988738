// SPDX-License-Identifier: MIT
// Contracts for strobe's execution workloads and differential tests (tools/src/workload.rs).
// Compiled with solc 0.8.28 (optimizer on, 200 runs, evmVersion cancun) into Workload.json by
// `tools/contracts/build.sh`; the JSON is committed so that no build step needs a compiler.
pragma solidity ^0.8.28;

/// A plain ERC-20 whose supply anyone can mint (test token).
contract Token {
    mapping(address => uint256) public balanceOf;
    mapping(address => mapping(address => uint256)) public allowance;
    uint256 public totalSupply;

    event Transfer(address indexed from, address indexed to, uint256 value);
    event Approval(address indexed owner, address indexed spender, uint256 value);

    function mint(address to, uint256 value) external {
        totalSupply += value;
        balanceOf[to] += value;
        emit Transfer(address(0), to, value);
    }

    function transfer(address to, uint256 value) external returns (bool) {
        balanceOf[msg.sender] -= value;
        balanceOf[to] += value;
        emit Transfer(msg.sender, to, value);
        return true;
    }

    function approve(address spender, uint256 value) external returns (bool) {
        allowance[msg.sender][spender] = value;
        emit Approval(msg.sender, spender, value);
        return true;
    }

    function transferFrom(address from, address to, uint256 value) external returns (bool) {
        uint256 allowed = allowance[from][msg.sender];
        if (allowed != type(uint256).max) {
            allowance[from][msg.sender] = allowed - value;
        }
        balanceOf[from] -= value;
        balanceOf[to] += value;
        emit Transfer(from, to, value);
        return true;
    }
}

/// A Uniswap-v2-style constant-product pool over two tokens (0.3% fee).
contract Pair {
    Token public immutable token0;
    Token public immutable token1;
    uint256 public reserve0;
    uint256 public reserve1;

    event Sync(uint256 reserve0, uint256 reserve1);
    event Swap(address indexed sender, bool zeroForOne, uint256 amountIn, uint256 amountOut);

    constructor(Token a, Token b) {
        token0 = a;
        token1 = b;
    }

    function addLiquidity(uint256 amount0, uint256 amount1) external {
        token0.transferFrom(msg.sender, address(this), amount0);
        token1.transferFrom(msg.sender, address(this), amount1);
        reserve0 += amount0;
        reserve1 += amount1;
        emit Sync(reserve0, reserve1);
    }

    function swap(bool zeroForOne, uint256 amountIn) external returns (uint256 amountOut) {
        (Token tokenIn, Token tokenOut, uint256 reserveIn, uint256 reserveOut) = zeroForOne
            ? (token0, token1, reserve0, reserve1)
            : (token1, token0, reserve1, reserve0);
        tokenIn.transferFrom(msg.sender, address(this), amountIn);
        uint256 inWithFee = amountIn * 997;
        amountOut = (inWithFee * reserveOut) / (reserveIn * 1000 + inWithFee);
        require(amountOut > 0, "insufficient output amount");
        tokenOut.transfer(msg.sender, amountOut);
        if (zeroForOne) {
            reserve0 = reserveIn + amountIn;
            reserve1 = reserveOut - amountOut;
        } else {
            reserve1 = reserveIn + amountIn;
            reserve0 = reserveOut - amountOut;
        }
        emit Swap(msg.sender, zeroForOne, amountIn, amountOut);
        emit Sync(reserve0, reserve1);
    }
}

/// Created by [`Factory`]; can destroy itself.
contract Child {
    uint256 public value;

    constructor(uint256 v) payable {
        value = v;
    }

    function destroy() external {
        selfdestruct(payable(msg.sender));
    }
}

/// Deploys children with CREATE and CREATE2, and destroys them.
contract Factory {
    address public last;

    event Created(address child);

    function create(uint256 v) external payable returns (address child) {
        child = address(new Child{value: msg.value}(v));
        last = child;
        emit Created(child);
    }

    function create2(bytes32 salt, uint256 v) external payable returns (address child) {
        child = address(new Child{salt: salt, value: msg.value}(v));
        last = child;
        emit Created(child);
    }

    /// EIP-6780: a contract destroyed in the transaction that created it is deleted.
    function createAndDestroy(uint256 v) external payable {
        Child child = new Child{value: msg.value}(v);
        child.destroy();
    }

    /// Destroying an older contract only moves its balance (EIP-6780).
    function destroyLast() external {
        Child(last).destroy();
    }

    receive() external payable {}
}

/// Reads the beneficiary, burns gas, reverts, calls precompiles, forwards ether.
contract Probe {
    mapping(address => uint256) public seen;

    event Seen(address indexed who, uint256 value);

    function readCoinbase() external {
        seen[msg.sender] = block.coinbase.balance;
        emit Seen(msg.sender, block.coinbase.balance);
    }

    function burn(uint256 rounds) external {
        uint256 x;
        for (uint256 i = 0; i < rounds; i++) {
            x = uint256(keccak256(abi.encode(x, i)));
            seen[address(uint160(i))] = x;
        }
    }

    function fail(uint256 code) external pure {
        require(code == 0, "probe failed");
    }

    function precompiles(bytes32 data) external {
        bytes32 a = sha256(abi.encode(data));
        address signer = ecrecover(a, 27, a, data);
        bytes20 b = ripemd160(abi.encode(a));
        (bool ok, bytes memory echoed) = address(4).staticcall(abi.encode(data));
        require(ok, "identity failed");
        uint256 mixed = uint256(a) ^ uint256(uint160(signer)) ^ uint256(bytes32(b)) ^ uint256(bytes32(echoed));
        seen[msg.sender] = mixed;
        emit Seen(msg.sender, mixed);
    }

    function forward(address payable to) external payable {
        (bool ok,) = to.call{value: msg.value}("");
        require(ok, "forward failed");
    }
}
