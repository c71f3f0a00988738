//! The L1 inbox contract (`contracts/StrobeInbox.sol`): its ABI, its committed bytecode, and the
//! calls strobe makes to it.
//!
//! The ABI and bytecode are compiled from the source by `contracts/build.sh` (solc-js, offline)
//! and committed as `contracts/StrobeInbox.json`, from which the Rust bindings (and the
//! deployed bytecode) are generated; a test recompiles the source and fails if the two differ,
//! so what is called and deployed is always what the source says.

use crate::SettlementError;
use alloy::{
    network::TransactionBuilder,
    primitives::{Address, Bytes},
    providers::{DynProvider, Provider},
    rpc::types::TransactionRequest,
    sol_types::SolValue,
};

// The generated `postBatch` builder takes one argument per ABI parameter.
#[allow(clippy::too_many_arguments)]
mod bindings {
    alloy::sol!(
        /// The inbox's interface, generated from the compiled ABI (`contracts/StrobeInbox.json`),
        /// so it cannot drift from the Solidity source.
        #[sol(rpc)]
        #[derive(Debug, PartialEq, Eq)]
        StrobeInbox,
        "../contracts/StrobeInbox.json"
    );
}
pub use bindings::StrobeInbox;

/// Data kind of a batch carried in calldata.
pub const DATA_CALLDATA: u8 = 0;
/// Data kind of a batch held by EigenDA (the calldata is its certificate).
pub const DATA_EIGENDA: u8 = 1;

/// The compiled contract, as committed (`contracts/StrobeInbox.json`).
pub const INBOX_ARTIFACT: &str = include_str!("../../contracts/StrobeInbox.json");

/// Creation code of the inbox for `sequencer`: the committed bytecode and the ABI-encoded
/// constructor argument.
pub fn creation_code(sequencer: Address) -> Bytes {
    let mut code = StrobeInbox::BYTECODE.to_vec();
    code.extend_from_slice(&sequencer.abi_encode());
    code.into()
}

/// Deploys an inbox for `sequencer` from the provider's wallet and returns its address once
/// the deployment is mined.
pub async fn deploy(
    provider: &DynProvider,
    sequencer: Address,
) -> Result<Address, SettlementError> {
    let req = TransactionRequest::default().with_deploy_code(creation_code(sequencer));
    let receipt = provider
        .send_transaction(req)
        .await
        .map_err(|e| SettlementError::L1(format!("deploying the inbox: {e}")))?
        .get_receipt()
        .await
        .map_err(|e| SettlementError::L1(format!("deploying the inbox: {e}")))?;
    if !receipt.status() {
        return Err(SettlementError::L1("the inbox deployment reverted".into()));
    }
    receipt
        .contract_address
        .ok_or_else(|| SettlementError::L1("the deployment receipt names no contract".into()))
}

/// Where the inbox stands: the next batch index and the first block it must start at.
pub async fn next_position(
    provider: &DynProvider,
    inbox: Address,
) -> Result<(u64, u64), SettlementError> {
    let contract = StrobeInbox::new(inbox, provider);
    let l1 = |e: alloy::contract::Error| SettlementError::L1(format!("reading the inbox: {e}"));
    let index = contract.nextIndex().call().await.map_err(l1)?;
    let block = contract.nextBlock().call().await.map_err(l1)?;
    Ok((index, block))
}

/// Decodes a revert of the inbox into words (its custom errors), or `None` for other reverts.
pub fn decode_revert(data: &[u8]) -> Option<String> {
    use alloy::sol_types::SolInterface;
    let err = StrobeInbox::StrobeInboxErrors::abi_decode(data).ok()?;
    Some(match err {
        StrobeInbox::StrobeInboxErrors::NotSequencer(e) => {
            format!("NotSequencer({}): only the registered sequencer may post", e.sender)
        }
        StrobeInbox::StrobeInboxErrors::WrongIndex(e) => {
            format!("WrongIndex: expected batch {}, got {}", e.expected, e.got)
        }
        StrobeInbox::StrobeInboxErrors::WrongFirstBlock(e) => {
            format!("WrongFirstBlock: expected block {}, got {}", e.expected, e.got)
        }
        StrobeInbox::StrobeInboxErrors::EmptyRange(e) => {
            format!("EmptyRange({}..={})", e.firstBlock, e.lastBlock)
        }
        StrobeInbox::StrobeInboxErrors::DataHashMismatch(e) => {
            format!("DataHashMismatch: declared {}, calldata hashes to {}", e.expected, e.got)
        }
        StrobeInbox::StrobeInboxErrors::UnknownDataKind(e) => {
            format!("UnknownDataKind({})", e.kind)
        }
    })
}
