//! Connections to the L1 node, and the words its errors come in.

use crate::SettlementError;
use alloy::{
    network::EthereumWallet,
    providers::{DynProvider, Provider, ProviderBuilder},
    signers::local::PrivateKeySigner,
    transports::{RpcError, TransportErrorKind},
};

/// A read-only connection to the L1 JSON-RPC endpoint `url` (no fillers: every transaction the
/// poster sends is built, priced and signed by the poster itself).
pub fn connect(url: &str) -> Result<DynProvider, SettlementError> {
    let url =
        url.parse().map_err(|e| SettlementError::Config(format!("L1 RPC URL `{url}`: {e}")))?;
    Ok(ProviderBuilder::default().connect_http(url).erased())
}

/// A connection that signs with `key` and fills nonce, gas and fees itself (for one-off
/// transactions such as deploying the inbox).
pub fn connect_with_wallet(
    url: &str,
    key: PrivateKeySigner,
) -> Result<DynProvider, SettlementError> {
    let url =
        url.parse().map_err(|e| SettlementError::Config(format!("L1 RPC URL `{url}`: {e}")))?;
    Ok(ProviderBuilder::new().wallet(EthereumWallet::from(key)).connect_http(url).erased())
}

/// Parses a hex private key (with or without `0x`).
pub fn parse_key(hex: &str) -> Result<PrivateKeySigner, SettlementError> {
    hex.trim()
        .parse()
        .map_err(|_| SettlementError::Config("the L1 key is not a 32-byte hex private key".into()))
}

/// What an error from the L1 node means for a poster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendFailure {
    /// A transaction with this nonce is pending and pays at least as much.
    Underpriced,
    /// The nonce is already used by a mined transaction.
    NonceTooLow,
    /// The node already has this exact transaction.
    AlreadyKnown,
    /// The call reverts; the reason, decoded where it is the inbox's.
    Reverted(String),
    /// Anything else (transport, node error).
    Other(String),
}

/// Classifies `err` by the messages geth, reth and anvil use.
pub fn classify(err: &RpcError<TransportErrorKind>) -> SendFailure {
    if let Some(payload) = err.as_error_resp() {
        if let Some(data) = payload.as_revert_data() {
            return SendFailure::Reverted(
                crate::inbox::decode_revert(&data).unwrap_or_else(|| payload.message.to_string()),
            );
        }
        let msg = payload.message.to_lowercase();
        if msg.contains("underpriced") {
            return SendFailure::Underpriced;
        }
        if msg.contains("nonce too low") || msg.contains("nonce is too low") {
            return SendFailure::NonceTooLow;
        }
        if msg.contains("already known") || msg.contains("already imported") {
            return SendFailure::AlreadyKnown;
        }
        if msg.contains("revert") {
            return SendFailure::Reverted(payload.message.to_string());
        }
    }
    SendFailure::Other(err.to_string())
}
