//! Reading geth-style genesis files.

use alloy_primitives::{Address, Bytes, U256};
use serde::Deserialize;
use std::{collections::BTreeMap, path::Path};
use strobe_engine::config::{Genesis, GenesisAccount};

/// A genesis file's contents that strobe uses.
pub(crate) struct GenesisFile {
    pub(crate) genesis: Genesis,
    pub(crate) chain_id: Option<u64>,
}

#[derive(Deserialize)]
struct RawGenesis {
    #[serde(default)]
    config: Option<RawConfig>,
    #[serde(default)]
    alloc: BTreeMap<String, RawAccount>,
    #[serde(default)]
    timestamp: Option<Quantity>,
    #[serde(default, rename = "extraData")]
    extra_data: Option<Bytes>,
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default, rename = "chainId")]
    chain_id: Option<u64>,
}

#[derive(Deserialize)]
struct RawAccount {
    #[serde(default)]
    balance: Option<Quantity>,
    #[serde(default)]
    nonce: Option<Quantity>,
    #[serde(default)]
    code: Option<Bytes>,
    #[serde(default)]
    storage: BTreeMap<U256, U256>,
}

/// A number written as a JSON number, a decimal string or a 0x-hex string (geth accepts all).
#[derive(Deserialize)]
#[serde(untagged)]
enum Quantity {
    Number(u64),
    Text(String),
}

impl Quantity {
    fn to_u256(&self) -> Result<U256, String> {
        match self {
            Quantity::Number(n) => Ok(U256::from(*n)),
            Quantity::Text(s) => {
                let s = s.trim();
                if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
                    U256::from_str_radix(hex, 16).map_err(|e| format!("bad hex number {s}: {e}"))
                } else {
                    U256::from_str_radix(s, 10).map_err(|e| format!("bad number {s}: {e}"))
                }
            }
        }
    }
}

/// Reads and validates a genesis file.
pub(crate) fn load(path: &Path) -> Result<GenesisFile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    parse(&text)
}

fn parse(text: &str) -> Result<GenesisFile, String> {
    let raw: RawGenesis = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let mut alloc = Vec::with_capacity(raw.alloc.len());
    for (addr, acct) in raw.alloc {
        let with_prefix = if addr.starts_with("0x") { addr.clone() } else { format!("0x{addr}") };
        let address: Address =
            with_prefix.parse().map_err(|e| format!("bad address {addr}: {e}"))?;
        let balance = acct.balance.map(|b| b.to_u256()).transpose()?.unwrap_or_default();
        let nonce = acct.nonce.map(|n| n.to_u256()).transpose()?.unwrap_or_default();
        let nonce: u64 = nonce.try_into().map_err(|_| format!("nonce of {addr} too large"))?;
        alloc.push((
            address,
            GenesisAccount {
                balance,
                nonce,
                code: acct.code.unwrap_or_default(),
                storage: acct.storage.into_iter().filter(|(_, v)| !v.is_zero()).collect(),
            },
        ));
    }
    let timestamp = raw.timestamp.map(|t| t.to_u256()).transpose()?.unwrap_or_default();
    Ok(GenesisFile {
        genesis: Genesis {
            alloc,
            timestamp: timestamp.try_into().map_err(|_| "timestamp too large".to_string())?,
            extra_data: raw.extra_data.unwrap_or_default(),
        },
        chain_id: raw.config.and_then(|c| c.chain_id),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_geth_alloc_forms() {
        let g = parse(
            r#"{"config":{"chainId":7},"timestamp":"0x10","alloc":{
                "0000000000000000000000000000000000000001":{"balance":"1000"},
                "0x0000000000000000000000000000000000000002":{"balance":"0x10","nonce":"0x2","code":"0x6000","storage":{"0x01":"0x02"}}}}"#,
        )
        .unwrap();
        assert_eq!(g.chain_id, Some(7));
        assert_eq!(g.genesis.timestamp, 16);
        assert_eq!(g.genesis.alloc[0].1.balance, U256::from(1000));
        assert_eq!(g.genesis.alloc[1].1.balance, U256::from(16));
        assert_eq!(g.genesis.alloc[1].1.nonce, 2);
        assert_eq!(g.genesis.alloc[1].1.storage, vec![(U256::from(1), U256::from(2))]);
        assert!(parse(r#"{"alloc":{"zz":{}}}"#).is_err());
    }
}
