//! Transaction intake: EIP-2718 decoding, sender recovery and the checks that need no state.
//!
//! Runs on network threads, never on the sequencer: signature recovery (libsecp256k1, ~50 µs) is
//! the largest CPU cost per transaction, so it is done where it can be spread over cores.

use crate::config::{INIT_CODE_MAX_SIZE_BYTES, TX_MAX_SIZE_BYTES};
use alloy_consensus::{Transaction, TxEnvelope};
use alloy_eips::eip2718::Decodable2718;
use alloy_primitives::{keccak256, Address, Signature, B256, U256};
use revm::primitives::hardfork::SpecId;

/// The spec the chain executes with.
pub const CHAIN_SPEC: SpecId = SpecId::PRAGUE;

/// Half the secp256k1 group order: EIP-2 rejects signatures with a larger `s`.
const SECP256K1N_HALF: U256 = U256::from_be_bytes([
    0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
    0x5D, 0x57, 0x6E, 0x73, 0x57, 0xA4, 0x50, 0x1D, 0xDF, 0xE9, 0x2F, 0x46, 0x68, 0x1B, 0x20, 0xA0,
]);

/// A decoded transaction with its recovered sender.
#[derive(Clone, Debug)]
pub struct RecoveredTx {
    /// The signed transaction.
    pub envelope: TxEnvelope,
    /// Recovered sender.
    pub sender: Address,
    /// Transaction hash (keccak256 of the EIP-2718 encoding).
    pub hash: B256,
    /// Length of the EIP-2718 encoding in bytes.
    pub encoded_len: usize,
    /// EIP-7702 authorities, recovered in list order (`None`: invalid signature, skipped).
    pub authorities: Vec<Option<Address>>,
}

impl RecoveredTx {
    /// Priority fee per gas this transaction pays on top of `base_fee` (zero if it cannot pay it).
    pub fn effective_tip(&self, base_fee: u64) -> u128 {
        self.envelope.effective_tip_per_gas(base_fee).unwrap_or(0)
    }

    /// Upper bound of what the transaction may cost the sender: gas × max fee + value.
    pub fn max_cost(&self) -> U256 {
        U256::from(self.envelope.gas_limit()) * U256::from(self.envelope.max_fee_per_gas())
            + self.envelope.value()
    }
}

/// Why a transaction was refused. Messages follow geth's wording, which clients match on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    /// The bytes are not a valid EIP-2718 transaction.
    #[error("rlp: {0}")]
    Decode(String),
    /// The signature is malformed or recovers no key.
    #[error("invalid sender")]
    InvalidSender,
    /// Chain id does not match (or a typed transaction without one).
    #[error("invalid chain id for signer: have {have} want {want}")]
    WrongChainId {
        /// Chain id in the transaction.
        have: u64,
        /// This chain's id.
        want: u64,
    },
    /// A transaction type this chain does not carry.
    #[error("transaction type not supported: {0}")]
    TypeNotSupported(&'static str),
    /// Encoded size above [`TX_MAX_SIZE_BYTES`].
    #[error("oversized data: transaction size {size}, limit {limit}")]
    Oversized {
        /// Encoded size.
        size: usize,
        /// Limit.
        limit: usize,
    },
    /// Init code above EIP-3860's limit.
    #[error("max initcode size exceeded: code size {size}, limit {limit}")]
    InitCodeTooLarge {
        /// Init code length.
        size: usize,
        /// Limit.
        limit: usize,
    },
    /// Gas limit below intrinsic gas (or the EIP-7623 floor).
    #[error("intrinsic gas too low: gas {gas}, minimum needed {needed}")]
    IntrinsicGasTooLow {
        /// Gas limit given.
        gas: u64,
        /// Minimum.
        needed: u64,
    },
    /// Gas limit above the block gas limit.
    #[error("exceeds block gas limit")]
    ExceedsBlockGasLimit,
    /// Tip above fee cap.
    #[error("max priority fee per gas higher than max fee per gas")]
    TipAboveFeeCap,
    /// Fee cap below the current base fee.
    #[error("max fee per gas less than block base fee: address {sender}, maxFeePerGas: {max_fee} baseFee: {base_fee}")]
    FeeCapBelowBaseFee {
        /// Sender.
        sender: Address,
        /// Fee cap given.
        max_fee: u128,
        /// Current base fee.
        base_fee: u64,
    },
    /// Tip below the pool minimum.
    #[error("transaction underpriced: tip needed {needed}, tip permitted {permitted}")]
    Underpriced {
        /// Minimum tip.
        needed: u128,
        /// Tip offered.
        permitted: u128,
    },
    /// EIP-7702 transaction without authorizations.
    #[error("EIP-7702 transaction with empty auth list")]
    EmptyAuthList,
    /// Nonce already used.
    #[error("nonce too low: next nonce {next}, tx nonce {nonce}")]
    NonceTooLow {
        /// Next expected nonce.
        next: u64,
        /// Nonce given.
        nonce: u64,
    },
    /// Nonce at `u64::MAX`.
    #[error("nonce has max value")]
    NonceMax,
    /// Balance below gas × price + value.
    #[error("insufficient funds for gas * price + value: balance {balance}, tx cost {cost}, overshot {overshot}")]
    InsufficientFunds {
        /// Sender balance.
        balance: U256,
        /// Maximum cost.
        cost: U256,
        /// Difference.
        overshot: U256,
    },
    /// Same transaction is already in the pool.
    #[error("already known")]
    AlreadyKnown,
    /// Same nonce in the pool and the fee bump is below 10%.
    #[error("replacement transaction underpriced")]
    ReplacementUnderpriced,
    /// The pool or the sender's share of it is full.
    #[error("txpool is full")]
    PoolFull,
    /// Too many future-nonce transactions from one sender.
    #[error("account limit exceeded: too many queued transactions from {0}")]
    AccountLimit(Address),
    /// The transaction was removed from the pool before inclusion.
    #[error("transaction evicted from the pool: {0}")]
    Evicted(&'static str),
    /// The transaction failed execution-time validation and was dropped.
    #[error("transaction dropped: {0}")]
    Dropped(String),
    /// Sync send only: the sender has a nonce gap, the transaction cannot be included yet.
    #[error("nonce gap: expected nonce {expected}, tx nonce {nonce}")]
    NonceGap {
        /// Next nonce the chain expects.
        expected: u64,
        /// Nonce given.
        nonce: u64,
    },
    /// The node is shutting down or its intake queue is full.
    #[error("sequencer unavailable: {0}")]
    Unavailable(&'static str),
}

/// Limits and chain facts the stateless checks need.
#[derive(Clone, Copy, Debug)]
pub struct IntakeRules {
    /// This chain's id.
    pub chain_id: u64,
    /// Block gas limit.
    pub block_gas_limit: u64,
    /// Base fee of the open block.
    pub base_fee: u64,
    /// Smallest accepted tip.
    pub min_priority_fee_wei: u128,
}

/// Decodes `raw` (EIP-2718), recovers its sender with libsecp256k1, and runs every check that
/// needs no state.
pub fn decode_and_recover(raw: &[u8], rules: &IntakeRules) -> Result<RecoveredTx, TxError> {
    if raw.len() > TX_MAX_SIZE_BYTES {
        return Err(TxError::Oversized { size: raw.len(), limit: TX_MAX_SIZE_BYTES });
    }
    let envelope = decode_exact(raw)?;
    if envelope.is_eip4844() {
        return Err(TxError::TypeNotSupported(
            "blob transactions (EIP-4844) are not accepted: this chain carries no blobs",
        ));
    }
    if let Err(e) = check_stateless(&envelope, rules) {
        // geth names the sender in this one message; recover it only on this rare path.
        return Err(match e {
            TxError::FeeCapBelowBaseFee { max_fee, base_fee, .. } => TxError::FeeCapBelowBaseFee {
                sender: recover_signer(envelope.signature(), envelope.signature_hash())?,
                max_fee,
                base_fee,
            },
            other => other,
        });
    }
    recovered(envelope, raw.len())
}

/// Decodes `raw` (EIP-2718) and recovers its sender and EIP-7702 authorities, with no check of
/// the chain's intake rules: for transactions already in a block (replay and verification).
pub fn recover(raw: &[u8]) -> Result<RecoveredTx, TxError> {
    recovered(decode_exact(raw)?, raw.len())
}

/// Decodes `raw` as exactly one EIP-2718 transaction.
fn decode_exact(raw: &[u8]) -> Result<TxEnvelope, TxError> {
    let mut buf = raw;
    let envelope = TxEnvelope::decode_2718(&mut buf).map_err(|e| TxError::Decode(e.to_string()))?;
    if !buf.is_empty() {
        return Err(TxError::Decode("input contains more than one value".into()));
    }
    Ok(envelope)
}

fn recovered(envelope: TxEnvelope, encoded_len: usize) -> Result<RecoveredTx, TxError> {
    let sender = recover_signer(envelope.signature(), envelope.signature_hash())?;
    let authorities = match envelope.authorization_list() {
        Some(list) => list
            .iter()
            .map(|auth| {
                let sig = auth.signature().ok()?;
                recover_signer(&sig, auth.signature_hash()).ok()
            })
            .collect(),
        None => Vec::new(),
    };
    let hash = *envelope.tx_hash();
    Ok(RecoveredTx { envelope, sender, hash, encoded_len, authorities })
}

/// Checks that depend only on the transaction and the chain's rules.
pub fn check_stateless(tx: &TxEnvelope, rules: &IntakeRules) -> Result<(), TxError> {
    match tx.chain_id() {
        Some(id) if id != rules.chain_id => {
            return Err(TxError::WrongChainId { have: id, want: rules.chain_id })
        }
        _ => {}
    }
    if tx.nonce() == u64::MAX {
        return Err(TxError::NonceMax);
    }
    if tx.gas_limit() > rules.block_gas_limit {
        return Err(TxError::ExceedsBlockGasLimit);
    }
    if tx.is_create() && tx.input().len() > INIT_CODE_MAX_SIZE_BYTES {
        return Err(TxError::InitCodeTooLarge {
            size: tx.input().len(),
            limit: INIT_CODE_MAX_SIZE_BYTES,
        });
    }
    if let Some(list) = tx.authorization_list() {
        if list.is_empty() {
            return Err(TxError::EmptyAuthList);
        }
    }
    let needed = intrinsic_gas(tx);
    if tx.gas_limit() < needed {
        return Err(TxError::IntrinsicGasTooLow { gas: tx.gas_limit(), needed });
    }
    let max_fee = tx.max_fee_per_gas();
    if let Some(tip) = tx.max_priority_fee_per_gas() {
        if tip > max_fee {
            return Err(TxError::TipAboveFeeCap);
        }
    }
    if max_fee < rules.base_fee as u128 {
        // The sender is not known here; `decode_and_recover` fills it in.
        return Err(TxError::FeeCapBelowBaseFee {
            sender: Address::ZERO,
            max_fee,
            base_fee: rules.base_fee,
        });
    }
    let tip = tx.effective_tip_per_gas(rules.base_fee).unwrap_or(0);
    if tip < rules.min_priority_fee_wei {
        return Err(TxError::Underpriced { needed: rules.min_priority_fee_wei, permitted: tip });
    }
    Ok(())
}

/// Intrinsic gas of `tx` under the chain's spec, including the EIP-7623 calldata floor.
pub fn intrinsic_gas(tx: &TxEnvelope) -> u64 {
    let (accounts, slots) = tx
        .access_list()
        .map(|l| (l.len() as u64, l.iter().map(|i| i.storage_keys.len() as u64).sum()))
        .unwrap_or((0, 0));
    let auths = tx.authorization_list().map_or(0, |l| l.len() as u64);
    let gas = revm::context_interface::cfg::gas::calculate_initial_tx_gas(
        CHAIN_SPEC,
        tx.input(),
        tx.is_create(),
        accounts,
        slots,
        auths,
        None,
    );
    gas.initial_regular_gas.max(gas.floor_gas)
}

/// Recovers the address that signed `hash` with libsecp256k1 (EIP-2: low `s` only).
pub fn recover_signer(sig: &Signature, hash: B256) -> Result<Address, TxError> {
    if sig.s() > SECP256K1N_HALF || sig.r().is_zero() || sig.s().is_zero() {
        return Err(TxError::InvalidSender);
    }
    let mut compact = [0u8; 64];
    compact[..32].copy_from_slice(&sig.r().to_be_bytes::<32>());
    compact[32..].copy_from_slice(&sig.s().to_be_bytes::<32>());
    let recid = secp256k1::ecdsa::RecoveryId::try_from(sig.v() as i32)
        .map_err(|_| TxError::InvalidSender)?;
    let sig = secp256k1::ecdsa::RecoverableSignature::from_compact(&compact, recid)
        .map_err(|_| TxError::InvalidSender)?;
    let key = sig
        .recover_ecdsa(secp256k1::Message::from_digest(hash.0))
        .map_err(|_| TxError::InvalidSender)?;
    let uncompressed = key.serialize_uncompressed();
    Ok(Address::from_slice(&keccak256(&uncompressed[1..])[12..]))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use alloy_consensus::transaction::SignerRecoverable;
    use proptest::prelude::*;

    /// Recovery through alloy's own (k256) path, for cross-checking ours.
    fn recover_with_alloy(tx: &TxEnvelope) -> Option<Address> {
        tx.recover_signer().ok()
    }

    pub(crate) fn rules() -> IntakeRules {
        IntakeRules {
            chain_id: 1,
            block_gas_limit: 30_000_000,
            base_fee: 0,
            min_priority_fee_wei: 0,
        }
    }

    /// The first anvil/hardhat dev key's address, which is well known.
    pub(crate) const DEV_ADDRESS: Address =
        alloy_primitives::address!("0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266");

    /// An EIP-1559 transfer of `value` wei to `0xaa…aa`, signed with libsecp256k1 by the first
    /// anvil/hardhat dev key ([`DEV_ADDRESS`]).
    pub(crate) fn signed_transfer(chain_id: u64, nonce: u64, value: u64) -> Vec<u8> {
        signed_call(chain_id, nonce, Address::repeat_byte(0xaa), 21_000, value)
    }

    /// An EIP-1559 call of `to` with no input, signed like [`signed_transfer`].
    pub(crate) fn signed_call(
        chain_id: u64,
        nonce: u64,
        to: Address,
        gas_limit: u64,
        value: u64,
    ) -> Vec<u8> {
        use alloy_consensus::{SignableTransaction, TxEip1559};
        use alloy_eips::eip2718::Encodable2718;
        let key = secp256k1::SecretKey::from_secret_bytes(
            alloy_primitives::hex::decode_to_array::<_, 32>(
                "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
            )
            .unwrap(),
        )
        .unwrap();
        let tx = TxEip1559 {
            chain_id,
            nonce,
            gas_limit,
            max_fee_per_gas: 2_000_000_000,
            max_priority_fee_per_gas: 1_000_000_000,
            to: alloy_primitives::TxKind::Call(to),
            value: U256::from(value),
            access_list: Default::default(),
            input: Default::default(),
        };
        let msg = secp256k1::Message::from_digest(tx.signature_hash().0);
        let (recid, bytes) =
            secp256k1::ecdsa::RecoverableSignature::sign_ecdsa_recoverable(msg, &key)
                .serialize_compact();
        let sig = Signature::new(
            U256::from_be_slice(&bytes[..32]),
            U256::from_be_slice(&bytes[32..]),
            recid == secp256k1::ecdsa::RecoveryId::One,
        );
        TxEnvelope::from(tx.into_signed(sig)).encoded_2718()
    }

    /// A signed transfer on chain 1 and its sender.
    pub(crate) fn sample() -> (Vec<u8>, Address) {
        (signed_transfer(1, 3, 5), DEV_ADDRESS)
    }

    #[test]
    fn secp256k1_recovery_matches_alloy_k256() {
        let (raw, sender) = sample();
        let tx = decode_and_recover(&raw, &rules()).unwrap();
        assert_eq!(tx.sender, sender);
        assert_eq!(recover_with_alloy(&tx.envelope), Some(sender));
        assert_eq!(tx.hash, keccak256(&raw));
    }

    #[test]
    fn blob_transactions_are_rejected() {
        let err = decode_and_recover(&[0x03, 0xc0], &rules()).unwrap_err();
        assert!(matches!(err, TxError::Decode(_) | TxError::TypeNotSupported(_)));
    }

    #[test]
    fn oversized_is_rejected_before_decoding() {
        let raw = vec![0u8; TX_MAX_SIZE_BYTES + 1];
        let err = decode_and_recover(&raw, &rules()).unwrap_err();
        assert!(err.to_string().starts_with("oversized data"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode_and_recover(&bytes, &rules());
        }

        /// Mutations of a valid transaction give an error or a transaction whose sender is the
        /// one both secp256k1 and k256 recover; never a panic.
        #[test]
        fn mutated_valid_tx(pos in any::<prop::sample::Index>(), byte in any::<u8>(),
                            cut in any::<prop::sample::Index>(), truncate in any::<bool>()) {
            let (mut raw, _) = sample();
            let i = pos.index(raw.len());
            raw[i] = byte;
            if truncate {
                raw.truncate(cut.index(raw.len()));
            }
            if let Ok(tx) = decode_and_recover(&raw, &rules()) {
                prop_assert_eq!(Some(tx.sender), recover_with_alloy(&tx.envelope));
            }
        }
    }
}
