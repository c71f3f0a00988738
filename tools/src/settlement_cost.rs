//! `strobe-tools settlement-cost`: what posting a workload to L1 costs — bytes per transaction
//! (raw and compressed) and L1 gas per L2 transaction — measured on a real `strobe dev --l1
//! anvil` (the poster and the inbox as shipped), read back from L1.

use crate::{
    bench::txs::send_and_wait,
    client::{await_rpc_url, dev_signer, signed_hex, Client, CHAIN_ID},
    workload::{mintCall, transferCall},
};
use alloy::{
    consensus::{Transaction, TxEip1559},
    primitives::{keccak256, Address, TxKind, U256},
    providers::Provider,
    sol_types::SolCall,
};
use serde_json::{json, Value};
use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};
use strobe_settlement::{
    batch::Batch,
    eigenda::DaClient,
    inbox::{self, StrobeInbox},
    l1,
    verifier::{batch_events, posted_data},
};

/// Dev accounts that send the workload.
const SENDERS: u32 = 10;

struct Node {
    child: Child,
    rpc: String,
    l1: String,
    inbox: Address,
    da_url: Option<String>,
}

impl Drop for Node {
    fn drop(&mut self) {
        // SIGTERM, so the node stops its anvil child too.
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

fn start(strobe: &Path, da: &str) -> Result<Node, String> {
    let mut child = Command::new(strobe)
        .args(["dev", "--quiet", "--port", "0", "--l1", "anvil", "--da", da])
        .args(["--batch-max-delay", "3s", "--batch-max-blocks", "600"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", strobe.display()))?;
    let (rpc, banner) = await_rpc_url(&mut child)?;
    let (mut l1, mut inbox, mut da_url) = (None, None, None);
    for line in &banner {
        if let Some(rest) = line.strip_prefix("Settlement:") {
            l1 = rest.split_whitespace().nth(1).map(|s| s.trim_end_matches(',').to_string());
            inbox =
                rest.split_whitespace().nth(3).and_then(|s| s.trim_end_matches(',').parse().ok());
        }
        if let Some(rest) = line.strip_prefix("Verify with:") {
            da_url = rest.split("--da-url ").nth(1).map(|s| s.trim().to_string());
        }
    }
    Ok(Node {
        child,
        rpc,
        l1: l1.ok_or("no settlement line")?,
        inbox: inbox.ok_or("no inbox address")?,
        da_url,
    })
}

fn tx(nonce: u64, to: Address, input: Vec<u8>, gas: u64) -> TxEip1559 {
    TxEip1559 {
        chain_id: CHAIN_ID,
        nonce,
        gas_limit: gas,
        max_fee_per_gas: 20_000_000_000,
        max_priority_fee_per_gas: 1_000_000_000,
        to: TxKind::Call(to),
        value: U256::ZERO,
        access_list: Default::default(),
        input: input.into(),
    }
}

fn head(c: &mut Client) -> Result<u64, String> {
    c.block_number().map_err(|e| e.to_string())
}

fn fresh(i: usize) -> Address {
    Address::from_word(keccak256(format!("settlement-cost recipient {i}")))
}

/// Runs `workload` (`transfers` or `erc20`) of `txs` transactions through `strobe dev --l1
/// anvil --da <da>` and reads back from L1 what its batches cost.
pub fn settlement_cost(
    strobe: &Path,
    workload: &str,
    txs: usize,
    da: &str,
) -> Result<Value, String> {
    let node = start(strobe, da)?;
    let mut c = Client::connect(&node.rpc).map_err(|e| e.to_string())?;
    let senders: Vec<_> = (0..SENDERS).map(dev_signer).collect();
    let mut nonces: Vec<u64> = vec![0; senders.len()];
    // Set-up (not measured): an ERC-20 and a balance for every sender.
    let token = Address::create(&senders[0].address(), 0);
    if workload == "erc20" {
        let code = crate::workload::creation_code("Token");
        let mut deploy = tx(0, Address::ZERO, code.to_vec(), 2_000_000);
        deploy.to = TxKind::Create;
        let mut raws = vec![signed_hex(&senders[0], deploy)];
        nonces[0] = 1;
        for s in &senders {
            let mint = mintCall { to: s.address(), value: U256::from(10u128.pow(30)) }.abi_encode();
            raws.push(signed_hex(&senders[0], tx(nonces[0], token, mint, 100_000)));
            nonces[0] += 1;
        }
        send_and_wait(&mut c, &raws, &[(senders[0].address(), nonces[0])])?;
    } else if workload != "transfers" {
        return Err(format!("unknown workload `{workload}` (transfers or erc20)"));
    }
    let provider = l1::connect(&node.l1).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let wait_posted = |block: u64| -> Result<u64, String> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (index, next) = runtime
                .block_on(inbox::next_position(&provider, node.inbox))
                .map_err(|e| e.to_string())?;
            if next > block {
                return Ok(index);
            }
            if Instant::now() > deadline {
                return Err(format!("block {block} was not posted in time"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    // Included transactions may sit in the block being filled: wait for that block too.
    let setup_head = head(&mut c)? + 1;
    let first_index = wait_posted(setup_head)?;
    // The measured workload, pre-signed.
    let raws: Vec<String> = (0..txs)
        .map(|i| {
            let k = i % senders.len();
            let n = nonces[k];
            nonces[k] += 1;
            let t = if workload == "erc20" {
                tx(
                    n,
                    token,
                    transferCall { to: fresh(i), value: U256::from(1000) }.abi_encode(),
                    60_000,
                )
            } else {
                let mut t = tx(n, fresh(i), Vec::new(), 21_000);
                t.value = U256::from(1);
                t
            };
            signed_hex(&senders[k], t)
        })
        .collect();
    let want: Vec<(Address, u64)> =
        senders.iter().zip(&nonces).map(|(s, n)| (s.address(), *n)).collect();
    send_and_wait(&mut c, &raws, &want)?;
    let end_head = head(&mut c)? + 1;
    let last_index = wait_posted(end_head)?;
    // Read the workload's batches back from L1.
    let da_client = node.da_url.as_deref().map(DaClient::new);
    let (mut l1_gas, mut calldata, mut compressed, mut raw, mut l2_txs, mut blocks) =
        (0u64, 0usize, 0usize, 0usize, 0usize, 0u64);
    runtime.block_on(async {
        let events =
            batch_events(&provider, node.inbox, 0, last_index).await.map_err(|e| e.to_string())?;
        for (_, (_, hash)) in events.range(first_index..) {
            let hash = *hash;
            let receipt = provider
                .get_transaction_receipt(hash)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("no receipt")?;
            let l1_tx = provider
                .get_transaction_by_hash(hash)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("no tx")?;
            let call = StrobeInbox::postBatchCall::abi_decode(l1_tx.inner.input())
                .map_err(|e| e.to_string())?;
            let data = posted_data(&call, da_client.as_ref()).await?;
            let batch = Batch::decompress(&data).map_err(|e| e.to_string())?;
            l1_gas += receipt.gas_used;
            calldata += l1_tx.inner.input().len();
            compressed += data.len();
            raw += batch.encode().len();
            l2_txs += batch.transactions();
            blocks += batch.blocks.len() as u64;
        }
        Ok::<(), String>(())
    })?;
    let per = |v: f64| if l2_txs == 0 { 0.0 } else { v / l2_txs as f64 };
    Ok(json!({
        "workload": workload,
        "da": da,
        "l2_txs": l2_txs,
        "l2_blocks": blocks,
        "batches": last_index - first_index,
        "raw_bytes_per_tx": per(raw as f64),
        "compressed_bytes_per_tx": per(compressed as f64),
        "compression_ratio": if compressed == 0 { 0.0 } else { raw as f64 / compressed as f64 },
        "l1_calldata_bytes_per_tx": per(calldata as f64),
        "l1_gas_per_l2_tx": per(l1_gas as f64),
        "l1_gas_total": l1_gas,
    }))
}
