//! The audit log's parsers and proof verifiers on arbitrary bytes: signed notes, checkpoints,
//! verifier keys, log exports and proof bundles (downloaded logs and offline bundles are outside
//! input), and inclusion and consistency proofs with arbitrary sizes and hashes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = coffer_tlog::checkpoint::Checkpoint::parse(data);
    let _ = coffer_tlog::bundle::LogExport::parse(data);
    let _ = coffer_tlog::bundle::ProofBundle::parse(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = coffer_tlog::note::VerifierKey::parse(text);
    }
    if let Ok(note) = coffer_tlog::note::Note::parse(data) {
        let _ = note.to_bytes();
    }
    // Proofs: two sizes and an index from the first 24 bytes, hashes from the rest.
    if data.len() >= 24 + 64 {
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&data[i * 8..i * 8 + 8]);
            u64::from_le_bytes(b)
        };
        let (a, b, index) = (word(0), word(1), word(2));
        let hashes: Vec<[u8; 32]> = data[24..]
            .chunks_exact(32)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(c);
                h
            })
            .collect();
        let (first, second, proof) = (&hashes[0], &hashes[1], &hashes[2..]);
        let _ = coffer_tlog::merkle::verify_consistency(a, b, first, second, proof);
        let _ = coffer_tlog::merkle::verify_inclusion(index, b, first, proof, second);
    }
});
