//! The L1 inbox contract (`contracts/StrobeInbox.sol`): its ABI, its committed bytecode, and the
//! calls strobe makes to it.
//!
//! The bytecode is compiled from the source by `contracts/build.sh` (solc-js, offline) and
//! committed as `contracts/StrobeInbox.json`; a test recompiles the source and fails if the two
//! differ, so what is deployed is always what the source says.

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
    alloy::sol! {
        /// The inbox's interface (kept in step with `contracts/StrobeInbox.sol`; a test compares
        /// the selectors with the compiled ABI).
        #[sol(rpc)]
        #[derive(Debug, PartialEq, Eq)]
        contract StrobeInbox {
            /// One accepted batch.
            struct Batch {
                uint64 firstBlock;
                uint64 lastBlock;
                uint8 dataKind;
                bytes32 lastBlockHash;
                bytes32 stateRoot;
                bytes32 dataHash;
            }

            /// A batch was accepted.
            event BatchPosted(
                uint64 indexed index,
                uint64 firstBlock,
                uint64 lastBlock,
                bytes32 lastBlockHash,
                bytes32 stateRoot,
                uint8 dataKind,
                bytes32 dataHash
            );

            /// The sender is not the registered sequencer.
            error NotSequencer(address sender);
            /// The batch index is not the next one.
            error WrongIndex(uint64 expected, uint64 got);
            /// The batch does not start right after the previous one.
            error WrongFirstBlock(uint64 expected, uint64 got);
            /// The block range is empty.
            error EmptyRange(uint64 firstBlock, uint64 lastBlock);
            /// Calldata does not hash to the declared data hash.
            error DataHashMismatch(bytes32 expected, bytes32 got);
            /// Data kind other than calldata (0) or EigenDA (1).
            error UnknownDataKind(uint8 kind);

            /// The only key allowed to post.
            function sequencer() external view returns (address);
            /// Index the next batch must carry.
            function nextIndex() external view returns (uint64);
            /// First L2 block the next batch must start at.
            function nextBlock() external view returns (uint64);
            /// Data kind: the data is this call's calldata.
            function DATA_CALLDATA() external view returns (uint8);
            /// Data kind: the calldata is an EigenDA certificate.
            function DATA_EIGENDA() external view returns (uint8);
            /// Appends batch `index` covering L2 blocks `firstBlock..=lastBlock`.
            function postBatch(
                uint64 index,
                uint64 firstBlock,
                uint64 lastBlock,
                bytes32 lastBlockHash,
                bytes32 stateRoot,
                uint8 dataKind,
                bytes32 dataHash,
                bytes calldata data
            ) external;
            /// Batch `index`, once accepted.
            function batch(uint64 index) external view returns (Batch memory);
        }
    }
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
    let artifact: serde_json::Value =
        serde_json::from_str(INBOX_ARTIFACT).expect("committed artifact is JSON");
    let hex = artifact["bytecode"].as_str().expect("artifact has bytecode");
    let mut code: Vec<u8> = hex.parse::<Bytes>().expect("bytecode is hex").into();
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
