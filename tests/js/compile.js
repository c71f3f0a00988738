#!/usr/bin/env node
// Compile one Solidity file offline with solc-js (the version pinned in package.json).
// Usage: node compile.js path/to/File.sol
// Prints {"<ContractName>": {"abi": [...], "bytecode": "0x...", "deployedBytecode": "0x..."}, ...}
// to stdout.
// Exits non-zero (errors on stderr) if the compiler reports any error.
'use strict';

const fs = require('fs');
const path = require('path');
const solc = require('solc');

function main() {
  const file = process.argv[2];
  if (!file) {
    process.stderr.write('usage: node compile.js <file.sol>\n');
    process.exit(2);
  }
  const abs = path.resolve(file);
  const source = fs.readFileSync(abs, 'utf8');
  const name = path.basename(abs);
  const dir = path.dirname(abs);

  const input = {
    language: 'Solidity',
    sources: { [name]: { content: source } },
    settings: {
      optimizer: { enabled: true, runs: 200 },
      evmVersion: 'cancun',
      outputSelection: { '*': { '*': ['abi', 'evm.bytecode.object', 'evm.deployedBytecode.object'] } },
    },
  };

  // Relative imports resolve next to the source file; nothing is fetched.
  function findImports(importPath) {
    const candidate = path.resolve(dir, importPath);
    try {
      return { contents: fs.readFileSync(candidate, 'utf8') };
    } catch (e) {
      return { error: `File not found: ${importPath}` };
    }
  }

  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
  const errors = (output.errors || []).filter((e) => e.severity === 'error');
  for (const e of output.errors || []) {
    process.stderr.write((e.formattedMessage || e.message) + '\n');
  }
  if (errors.length > 0) {
    process.exit(1);
  }

  const result = {};
  const contracts = (output.contracts || {})[name] || {};
  for (const [contractName, c] of Object.entries(contracts)) {
    result[contractName] = {
      abi: c.abi,
      bytecode: '0x' + c.evm.bytecode.object,
      // Extra (not required by callers): runtime code, to compare with eth_getCode.
      deployedBytecode: '0x' + c.evm.deployedBytecode.object,
    };
  }
  if (Object.keys(result).length === 0) {
    process.stderr.write(`no contracts found in ${file}\n`);
    process.exit(1);
  }
  process.stdout.write(JSON.stringify(result) + '\n');
}

main();
