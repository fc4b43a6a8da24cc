//! Shared helpers for the integration tests: test data and a tiny deterministic PRNG.

#![allow(dead_code)]

use std::path::PathBuf;

pub fn testdata(path: &str) -> Vec<u8> {
    let full = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(path);
    std::fs::read(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

pub fn testdata_str(path: &str) -> String {
    String::from_utf8(testdata(path)).unwrap()
}

pub fn h32(s: &str) -> [u8; 32] {
    hex::decode(s).unwrap().try_into().unwrap()
}

/// xorshift64*: reproducible "random" mutations without a rand dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Every prefix of `input`, then `rounds` random mutations (1-4 bytes overwritten, or a random
/// byte inserted or removed, or a random length field zone set to 0xff), fed to `parse`. The
/// closure must not panic; its result is ignored.
pub fn hammer(input: &[u8], rounds: usize, seed: u64, mut parse: impl FnMut(&[u8])) {
    for len in 0..=input.len() {
        parse(&input[..len]);
    }
    let mut rng = Rng::new(seed);
    for _ in 0..rounds {
        let mut m = input.to_vec();
        match rng.below(4) {
            0 => {
                for _ in 0..=rng.below(4) {
                    let i = rng.below(m.len());
                    m[i] = rng.next() as u8;
                }
            }
            1 => {
                let i = rng.below(m.len() + 1);
                m.insert(i, rng.next() as u8);
            }
            2 => {
                let i = rng.below(m.len());
                m.remove(i);
            }
            _ => {
                let i = rng.below(m.len());
                let end = (i + 1 + rng.below(8)).min(m.len());
                m[i..end].fill(0xff);
            }
        }
        parse(&m);
    }
}
