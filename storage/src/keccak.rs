//! keccak256 of many independent messages at once: the commitment's hashing engine.
//!
//! A root update hashes hundreds of thousands of small, independent messages (touched buckets,
//! then four-child tree nodes level by level), and one keccak-f[1600] permutation is its floor
//! (see BENCHMARKS.md). A permutation works on 25 64-bit lanes, so eight of them fit side by side
//! in 25 AVX-512 registers: on CPUs with AVX-512F, [`PaddedMessages::hash_all`] runs eight
//! messages through one vectorised permutation (`vprolq` for the rotations, `vpternlogq` for θ's three-way XORs and
//! χ), which costs about what one scalar permutation costs. Elsewhere it falls back to the scalar
//! `keccak256` (alloy's, assembly where available), message by message.
//!
//! Messages of different lengths can share a batch: each lane absorbs its own blocks, the batch
//! runs as many permutations as its longest message needs, and each lane's digest is read out
//! after its own last block. Messages are laid out once, already padded ([`PaddedMessages`]), so
//! each block is gathered straight from them.

/// A keccak256 digest.
pub type Hash = [u8; 32];
use alloy_primitives::keccak256;

/// Bytes absorbed per permutation by keccak256 (1600 − 2·256 bits).
pub const RATE: usize = 136;
/// Messages hashed together by the vectorised permutation.
pub const LANES: usize = 8;

/// Messages laid out one after another, each followed by its keccak padding: a batch of eight
/// absorbs its blocks straight from here, with no copy per block.
#[derive(Default)]
pub struct PaddedMessages {
    bytes: Vec<u8>,
    /// `(start, length)` of each message in `bytes`.
    messages: Vec<(usize, usize)>,
}

impl PaddedMessages {
    /// Room for `messages` messages of `bytes` bytes in all.
    pub fn with_capacity(bytes: usize, messages: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(bytes + messages * RATE),
            messages: Vec::with_capacity(messages),
        }
    }

    /// Messages pushed.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether no message was pushed.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Appends the message made of `parts`, then its padding (0x01, zeros, 0x80 in the last
    /// byte of its last block).
    pub fn push<'a>(&mut self, parts: impl IntoIterator<Item = &'a [u8]>) {
        let start = self.bytes.len();
        for part in parts {
            self.bytes.extend_from_slice(part);
        }
        let len = self.bytes.len() - start;
        let padded = (len / RATE + 1) * RATE;
        self.bytes.resize(start + padded, 0);
        // The last block holds at most 135 message bytes, so the 0x01 always fits (it shares
        // the last byte with the 0x80 when the message ends one byte short of a block).
        self.bytes[start + len] = 0x01;
        self.bytes[start + padded - 1] |= 0x80;
        self.messages.push((start, len));
    }

    /// keccak256 of every message into `out`, in push order. Eight consecutive messages are
    /// hashed together and run as many permutations as the longest of them needs: push
    /// messages of similar length next to each other.
    ///
    /// # Panics
    /// If `out` is shorter than the messages.
    pub fn hash_all(&self, out: &mut [Hash]) {
        assert!(out.len() >= self.messages.len(), "one digest per message");
        let scalar = |(start, len): &(usize, usize)| keccak256(&self.bytes[*start..start + len]).0;
        #[cfg(target_arch = "x86_64")]
        if x86::available() {
            for (batch, digests) in self.messages.chunks(LANES).zip(out.chunks_mut(LANES)) {
                if batch.len() == 1 {
                    digests[0] = scalar(&batch[0]);
                } else {
                    // SAFETY: `available()` checked that this CPU has AVX-512F, the only
                    // feature the function is compiled for.
                    unsafe { x86::keccak256_padded_x8(&self.bytes, batch, digests) };
                }
            }
            return;
        }
        for (m, d) in self.messages.iter().zip(out.iter_mut()) {
            *d = scalar(m);
        }
    }
}

/// keccak256 of eight 128-byte messages (four tree children each): `out[i]` for `inputs[i]`.
/// The commitment's most frequent hash, so it skips the general path's padding logic.
pub fn keccak256_128x8(inputs: &[[u8; 128]; LANES], out: &mut [Hash; LANES]) {
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        // SAFETY: `available()` checked that this CPU has AVX-512F, the only feature the
        // function is compiled for.
        unsafe { x86::keccak256_128x8(inputs, out) };
        return;
    }
    for (input, digest) in inputs.iter().zip(out.iter_mut()) {
        *digest = keccak256(input).0;
    }
}

/// Whether [`PaddedMessages::hash_all`] and [`keccak256_128x8`] run the eight-way permutation
/// on this CPU.
pub fn vectorised() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        x86::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// keccak-f[1600] round constants.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const ROUND_CONSTANTS: [u64; 24] = [
    0x0000000000000001,
    0x0000000000008082,
    0x800000000000808a,
    0x8000000080008000,
    0x000000000000808b,
    0x0000000080000001,
    0x8000000080008081,
    0x8000000000008009,
    0x000000000000008a,
    0x0000000000000088,
    0x0000000080008009,
    0x000000008000000a,
    0x000000008000808b,
    0x800000000000008b,
    0x8000000000008089,
    0x8000000000008003,
    0x8000000000008002,
    0x8000000000000080,
    0x000000000000800a,
    0x800000008000000a,
    0x8000000080008081,
    0x8000000000008080,
    0x0000000080000001,
    0x8000000080008008,
];

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Hash, LANES, RATE, ROUND_CONSTANTS};
    use std::arch::x86_64::*;
    use std::sync::OnceLock;

    /// Whether the CPU has AVX-512F (detected once).
    pub(super) fn available() -> bool {
        static AVX512F: OnceLock<bool> = OnceLock::new();
        *AVX512F.get_or_init(|| std::arch::is_x86_feature_detected!("avx512f"))
    }

    /// Three-way XOR.
    const XOR3: i32 = 0x96;
    /// χ: `a ^ (!b & c)`.
    const CHI: i32 = 0xD2;

    /// One keccak-f[1600] permutation of eight states, lane `i` of each in `a[i]`.
    #[target_feature(enable = "avx512f")]
    fn permute(a: &mut [__m512i; 25]) {
        macro_rules! rol {
            ($v:expr, $n:literal) => {
                _mm512_rol_epi64::<$n>($v)
            };
        }
        for rc in ROUND_CONSTANTS {
            // θ
            let c: [__m512i; 5] = std::array::from_fn(|x| {
                let t = _mm512_ternarylogic_epi64::<XOR3>(a[x], a[x + 5], a[x + 10]);
                _mm512_ternarylogic_epi64::<XOR3>(t, a[x + 15], a[x + 20])
            });
            for x in 0..5 {
                let d = _mm512_xor_si512(c[(x + 4) % 5], rol!(c[(x + 1) % 5], 1));
                for y in 0..5 {
                    a[x + 5 * y] = _mm512_xor_si512(a[x + 5 * y], d);
                }
            }
            // ρ and π: b[y, 2x + 3y] = rot(a[x, y], r[x, y]).
            let b = [
                a[0],
                rol!(a[6], 44),
                rol!(a[12], 43),
                rol!(a[18], 21),
                rol!(a[24], 14),
                rol!(a[3], 28),
                rol!(a[9], 20),
                rol!(a[10], 3),
                rol!(a[16], 45),
                rol!(a[22], 61),
                rol!(a[1], 1),
                rol!(a[7], 6),
                rol!(a[13], 25),
                rol!(a[19], 8),
                rol!(a[20], 18),
                rol!(a[4], 27),
                rol!(a[5], 36),
                rol!(a[11], 10),
                rol!(a[17], 15),
                rol!(a[23], 56),
                rol!(a[2], 62),
                rol!(a[8], 55),
                rol!(a[14], 39),
                rol!(a[15], 41),
                rol!(a[21], 2),
            ];
            // χ
            for y in 0..5 {
                for x in 0..5 {
                    a[x + 5 * y] = _mm512_ternarylogic_epi64::<CHI>(
                        b[x + 5 * y],
                        b[(x + 1) % 5 + 5 * y],
                        b[(x + 2) % 5 + 5 * y],
                    );
                }
            }
            // ι
            a[0] = _mm512_xor_si512(a[0], _mm512_set1_epi64(rc as i64));
        }
    }

    /// XORs `words` u64 words into the state from each lane's block: lane `i`'s starts at byte
    /// `offsets[i]` of `bytes`. One gather per word.
    #[target_feature(enable = "avx512f")]
    fn absorb(state: &mut [__m512i; 25], bytes: &[u8], offsets: [usize; LANES], words: usize) {
        assert!(words <= 25, "a block holds at most 25 words");
        assert!(offsets.iter().all(|o| o + words * 8 <= bytes.len()), "blocks inside `bytes`");
        let o = offsets.map(|o| o as i64);
        let rows = _mm512_set_epi64(o[7], o[6], o[5], o[4], o[3], o[2], o[1], o[0]);
        let base: *const i64 = bytes.as_ptr().cast();
        for (w, lane) in state.iter_mut().take(words).enumerate() {
            let index = _mm512_add_epi64(rows, _mm512_set1_epi64(8 * w as i64));
            // SAFETY: each u64 at byte `offsets[i] + 8w` (w < words) lies in `bytes` (asserted
            // above); scale 1 reads the indices as byte offsets; gathers need no alignment.
            let v = unsafe { _mm512_i64gather_epi64::<1>(index, base) };
            *lane = _mm512_xor_si512(*lane, v);
        }
    }

    /// The digests the state holds: lane `i`'s is `words[w * LANES + i]`, w < 4, little-endian.
    #[target_feature(enable = "avx512f")]
    fn squeeze(state: &[__m512i; 25]) -> [u64; 4 * LANES] {
        let mut words = [0u64; 4 * LANES];
        for (w, lane) in state.iter().take(4).enumerate() {
            // SAFETY: `words[w * LANES..]` has room for LANES (8) u64s, the 64 bytes an
            // unaligned 512-bit store writes.
            unsafe { _mm512_storeu_si512(words.as_mut_ptr().add(w * LANES).cast(), *lane) };
        }
        words
    }

    /// Lane `i`'s digest from [`squeeze`]'s words.
    fn digest_of(words: &[u64; 4 * LANES], i: usize) -> Hash {
        let mut digest = [0u8; 32];
        for w in 0..4 {
            digest[w * 8..w * 8 + 8].copy_from_slice(&words[w * LANES + i].to_le_bytes());
        }
        digest
    }

    /// keccak256 of eight 128-byte messages: one block each, whose padding is a constant
    /// (0x01 right after the message, in lane 16, and 0x80 in that lane's last byte).
    #[target_feature(enable = "avx512f")]
    pub(super) fn keccak256_128x8(inputs: &[[u8; 128]; LANES], digests: &mut [Hash; LANES]) {
        const PAD: i64 = 0x8000_0000_0000_0001_u64 as i64;
        let mut state = [_mm512_setzero_si512(); 25];
        absorb(&mut state, inputs.as_flattened(), std::array::from_fn(|i| i * 128), 16);
        state[16] = _mm512_set1_epi64(PAD);
        permute(&mut state);
        let words = squeeze(&state);
        for (i, digest) in digests.iter_mut().enumerate() {
            *digest = digest_of(&words, i);
        }
    }

    /// keccak256 of up to eight messages padded in place in `bytes` (`(start, length)` each,
    /// as [`super::PaddedMessages`] lays them out): `digests[i]` for `messages[i]`.
    #[target_feature(enable = "avx512f")]
    pub(super) fn keccak256_padded_x8(
        bytes: &[u8],
        messages: &[(usize, usize)],
        digests: &mut [Hash],
    ) {
        assert!(!messages.is_empty() && messages.len() <= LANES && digests.len() >= messages.len());
        let blocks: [usize; LANES] =
            std::array::from_fn(|i| messages.get(i).map_or(1, |(_, len)| len / RATE + 1));
        let most = blocks.iter().copied().max().unwrap_or(1);
        let mut state = [_mm512_setzero_si512(); 25];
        for block in 0..most {
            // A lane past its last block (its digest already taken), or with no message, just
            // absorbs some block again; its state is never read.
            let offsets = std::array::from_fn(|i| {
                let (start, _) = messages.get(i).copied().unwrap_or(messages[0]);
                start + block.min(blocks[i] - 1) * RATE
            });
            absorb(&mut state, bytes, offsets, RATE / 8);
            permute(&mut state);
            let finished = |i: &usize| blocks[*i] == block + 1;
            if (0..messages.len()).any(|i| finished(&i)) {
                let words = squeeze(&state);
                for i in (0..messages.len()).filter(finished) {
                    digests[i] = digest_of(&words, i);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reference(messages: &[Vec<u8>]) -> Vec<Hash> {
        messages.iter().map(|m| keccak256(m).0).collect()
    }

    fn batched(messages: &[Vec<u8>]) -> Vec<Hash> {
        let mut padded = PaddedMessages::default();
        for m in messages {
            // In two parts, as a bucket's records are pushed.
            let (a, b) = m.split_at(m.len() / 3);
            padded.push([a, b]);
        }
        let mut out = vec![[0u8; 32]; padded.len()];
        padded.hash_all(&mut out);
        out
    }

    #[test]
    fn every_length_around_the_block_boundaries() {
        // Lengths 0..=3 blocks + 1 in one batch, so lanes finish after different blocks and
        // the padding lands in the same byte (135), the last byte, and a fresh block (136).
        let messages: Vec<Vec<u8>> =
            (0..=3 * RATE + 1).map(|n| (0..n).map(|i| (i * 31 + n) as u8).collect()).collect();
        assert_eq!(batched(&messages), reference(&messages));
        eprintln!("eight-way permutation in use: {}", vectorised());
    }

    #[test]
    fn known_answers() {
        // keccak256("") and keccak256("abc"), as published.
        let out = batched(&[Vec::new(), b"abc".to_vec()]);
        assert_eq!(
            alloy_primitives::hex::encode(out[0]),
            "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
        );
        assert_eq!(
            alloy_primitives::hex::encode(out[1]),
            "4e03657aea45a94fc7d47ba826c8d667c0d1e6e33a64a036ec44f58fa12d6c45"
        );
    }

    proptest! {
        /// Eight four-child nodes hash as the scalar keccak256 does.
        #[test]
        fn nodes_equal_scalar(bytes in proptest::collection::vec(any::<u8>(), 1024)) {
            let inputs: [[u8; 128]; LANES] =
                std::array::from_fn(|i| bytes[i * 128..i * 128 + 128].try_into().unwrap());
            let mut out = [[0u8; 32]; LANES];
            keccak256_128x8(&inputs, &mut out);
            for (input, digest) in inputs.iter().zip(out) {
                prop_assert_eq!(digest, keccak256(input).0);
            }
        }

        /// Any batch of messages of any lengths hashes as the scalar keccak256 does.
        #[test]
        fn equals_scalar(messages in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..600), 0..20))
        {
            prop_assert_eq!(batched(&messages), reference(&messages));
        }
    }
}
