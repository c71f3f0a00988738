//! Chain parameters the sequencer runs with.

use alloy_primitives::{Address, U256};
use std::time::Duration;

/// Largest encoded transaction accepted (geth's `txMaxSize`, 128 KiB).
pub const TX_MAX_SIZE_BYTES: usize = 128 * 1024;
/// EIP-3860 limit on init code length.
pub const INIT_CODE_MAX_SIZE_BYTES: usize = 2 * 24_576;
/// Base fee of the first block (geth's `InitialBaseFee`, 1 gwei).
pub const INITIAL_BASE_FEE_WEI: u64 = 1_000_000_000;
/// EIP-1559 base fee change denominator.
pub const BASE_FEE_CHANGE_DENOMINATOR: u64 = 8;
/// EIP-1559 elasticity multiplier (gas target = gas limit / 2).
pub const ELASTICITY_MULTIPLIER: u64 = 2;

/// Parameters of one chain, fixed at start.
#[derive(Clone, Debug)]
pub struct ChainConfig {
    /// EIP-155 chain id.
    pub chain_id: u64,
    /// Interval between mini-blocks.
    pub mini_block_time: Duration,
    /// Interval between EVM blocks.
    pub block_time: Duration,
    /// Gas limit of one EVM block.
    pub block_gas_limit: u64,
    /// Gas a single mini-block may use before it is sealed early (a larger transaction still fits
    /// alone).
    pub mini_block_gas_limit: u64,
    /// Receives priority fees.
    pub beneficiary: Address,
    /// Smallest priority fee (tip) the pool accepts, in wei (geth's `txpool.pricelimit`).
    pub min_priority_fee_wei: u128,
    /// Pool bounds.
    pub pool: PoolLimits,
    /// CPU to pin the sequencer thread to, if any.
    pub sequencer_core: Option<usize>,
    /// Block-STM worker threads; 1 executes every mini-block sequentially.
    pub exec_threads: usize,
    /// CPUs the Block-STM workers are pinned to (cycled); empty: not pinned.
    pub exec_cores: Vec<usize>,
    /// Smallest mini-block (in transactions) executed in parallel.
    pub parallel_min_txs: usize,
}

impl Default for ChainConfig {
    fn default() -> Self {
        let block_gas_limit = 1_000_000_000;
        Self {
            chain_id: 31337,
            mini_block_time: Duration::from_millis(10),
            block_time: Duration::from_secs(1),
            block_gas_limit,
            mini_block_gas_limit: block_gas_limit / 10,
            beneficiary: Address::ZERO,
            min_priority_fee_wei: 1,
            pool: PoolLimits::default(),
            sequencer_core: None,
            exec_threads: 1,
            exec_cores: Vec::new(),
            parallel_min_txs: crate::parallel::MIN_PARALLEL_TXS,
        }
    }
}

/// Bounds of the transaction pool.
#[derive(Clone, Copy, Debug)]
pub struct PoolLimits {
    /// Most transactions in the pool in total.
    pub max_total: usize,
    /// Most future-nonce (gapped) transactions one sender may have waiting.
    pub max_future_per_sender: usize,
    /// Most transactions one sender may have in the pool.
    pub max_per_sender: usize,
    /// Most transactions one mini-block carries.
    pub max_txs_per_mini_block: usize,
}

impl Default for PoolLimits {
    fn default() -> Self {
        Self {
            max_total: 200_000,
            max_future_per_sender: 64,
            max_per_sender: 16_384,
            max_txs_per_mini_block: 20_000,
        }
    }
}

/// One genesis account (geth-style alloc entry).
#[derive(Clone, Debug, Default)]
pub struct GenesisAccount {
    /// Balance in wei.
    pub balance: U256,
    /// Nonce.
    pub nonce: u64,
    /// Runtime code (empty for none).
    pub code: alloy_primitives::Bytes,
    /// Storage slots.
    pub storage: Vec<(U256, U256)>,
}

/// The genesis state and header fields.
#[derive(Clone, Debug, Default)]
pub struct Genesis {
    /// Accounts at genesis.
    pub alloc: Vec<(Address, GenesisAccount)>,
    /// Genesis timestamp in seconds (0 = now).
    pub timestamp: u64,
    /// Extra data of the genesis header.
    pub extra_data: alloy_primitives::Bytes,
}

/// Computes the next block's base fee from its parent (EIP-1559).
pub fn next_base_fee(parent_base_fee: u64, parent_gas_used: u64, parent_gas_limit: u64) -> u64 {
    let target = parent_gas_limit / ELASTICITY_MULTIPLIER;
    if target == 0 || parent_gas_used == target {
        return parent_base_fee;
    }
    let base = parent_base_fee as u128;
    if parent_gas_used > target {
        let delta = base * (parent_gas_used - target) as u128
            / target as u128
            / BASE_FEE_CHANGE_DENOMINATOR as u128;
        (base + delta.max(1)).min(u64::MAX as u128) as u64
    } else {
        let delta = base * (target - parent_gas_used) as u128
            / target as u128
            / BASE_FEE_CHANGE_DENOMINATOR as u128;
        (base - delta) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_fee_follows_eip1559() {
        // Values cross-checked against alloy_eips' implementation of the same formula.
        let p = alloy_eips::eip1559::BaseFeeParams::ethereum();
        for (fee, used, limit) in [
            (1_000_000_000u64, 0u64, 30_000_000u64),
            (1_000_000_000, 15_000_000, 30_000_000),
            (1_000_000_000, 30_000_000, 30_000_000),
            (7, 0, 30_000_000),
            (123_456_789, 20_000_000, 30_000_000),
        ] {
            let want = alloy_eips::eip1559::calc_next_block_base_fee(used, limit, fee, p);
            assert_eq!(next_base_fee(fee, used, limit), want, "{fee} {used} {limit}");
        }
    }
}
