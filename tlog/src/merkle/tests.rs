//! Known vectors (RFC 6962 test inputs, as used by transparency-dev/merkle's `proof` package
//! tests), and exhaustive agreement between the proofs made and the RFC 9162 verifiers for every
//! small tree, with the corruptions transparency-dev probes.

use super::*;

fn h(s: &str) -> Hash {
    let mut out = [0u8; HASH_LEN];
    hex::decode_to_slice(s, &mut out).unwrap();
    out
}

/// The eight entries of the RFC 6962 reference test tree.
fn entries() -> Vec<Vec<u8>> {
    [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
    .iter()
    .map(|e| hex::decode(e).unwrap())
    .collect()
}

/// Roots of the first 1..=8 entries.
const ROOTS: [&str; 8] = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

fn reference_tree() -> MemoryTree {
    let mut tree = MemoryTree::new();
    for e in entries() {
        tree.append_entry(&e);
    }
    tree
}

/// (leaf index, tree size, proof)
fn inclusion_vectors() -> Vec<(u64, u64, Vec<Hash>)> {
    vec![
        (
            0,
            8,
            vec![
                h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
                h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
            ],
        ),
        (
            5,
            8,
            vec![
                h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
                h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
                h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
            ],
        ),
        (
            2,
            3,
            vec![h(
                "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            )],
        ),
        (
            1,
            5,
            vec![
                h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
                h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
            ],
        ),
        (0, 1, vec![]),
    ]
}

/// (old size, new size, proof)
fn consistency_vectors() -> Vec<(u64, u64, Vec<Hash>)> {
    vec![
        (1, 1, vec![]),
        (
            1,
            8,
            vec![
                h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
                h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
            ],
        ),
        (
            6,
            8,
            vec![
                h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
                h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
                h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
            ],
        ),
        (
            2,
            5,
            vec![
                h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
            ],
        ),
        (
            6,
            7,
            vec![
                h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
                h("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
                h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
            ],
        ),
    ]
}

#[test]
fn the_empty_tree_hashes_to_sha256_of_nothing() {
    assert_eq!(
        empty_root(),
        h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    );
    assert_eq!(MemoryTree::new().root(), empty_root());
    assert_eq!(tree_hash(&MemoryTree::new(), 0).unwrap(), empty_root());
    assert_eq!(root_from_leaf_hashes(&[]), empty_root());
}

#[test]
fn reference_roots_match_rfc6962_vectors() {
    let leaves: Vec<Hash> = entries().iter().map(|e| leaf_hash(e)).collect();
    let mut tree = MemoryTree::new();
    for (i, leaf) in leaves.iter().enumerate() {
        tree.append_leaf_hash(*leaf);
        let want = h(ROOTS[i]);
        assert_eq!(tree.root(), want, "root of {} leaves", i + 1);
        assert_eq!(root_from_leaf_hashes(&leaves[..=i]), want);
    }
    for (i, root) in ROOTS.iter().enumerate() {
        assert_eq!(tree.root_at(i as u64 + 1).unwrap(), h(root));
    }
}

#[test]
fn reference_inclusion_proofs_are_made_and_verify() {
    let tree = reference_tree();
    let leaves: Vec<Hash> = entries().iter().map(|e| leaf_hash(e)).collect();
    for (index, size, proof) in inclusion_vectors() {
        assert_eq!(tree.inclusion_proof(index, size).unwrap(), proof);
        let root = h(ROOTS[size as usize - 1]);
        verify_inclusion(index, size, &leaves[index as usize], &proof, &root).unwrap();
    }
}

#[test]
fn reference_consistency_proofs_are_made_and_verify() {
    let tree = reference_tree();
    for (old, new, proof) in consistency_vectors() {
        assert_eq!(tree.consistency_proof(old, new).unwrap(), proof);
        let (r1, r2) = (h(ROOTS[old as usize - 1]), h(ROOTS[new as usize - 1]));
        verify_consistency(old, new, &r1, &r2, &proof).unwrap();
    }
}

fn flip(proof: &[Hash], i: usize) -> Vec<Hash> {
    let mut p = proof.to_vec();
    p[i][0] ^= 8;
    p
}

/// transparency-dev's inclusion probes: every one must fail.
fn corrupt_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) {
    let some = h("abacaba000000000000000000000000000000000000000000060061e00123456");
    let with_end = |x: Hash| [proof, &[x]].concat();
    let with_front = |x: Hash| [&[x], proof].concat();
    let mut probes: Vec<(u64, u64, Hash, Vec<Hash>, Hash, String)> = vec![
        (
            index.wrapping_sub(1),
            size,
            *leaf,
            proof.to_vec(),
            *root,
            "index - 1".into(),
        ),
        (
            index + 1,
            size,
            *leaf,
            proof.to_vec(),
            *root,
            "index + 1".into(),
        ),
        (
            index ^ 2,
            size,
            *leaf,
            proof.to_vec(),
            *root,
            "index ^ 2".into(),
        ),
        (
            index,
            size * 2,
            *leaf,
            proof.to_vec(),
            *root,
            "size * 2".into(),
        ),
        (
            index,
            size / 2,
            *leaf,
            proof.to_vec(),
            *root,
            "size / 2".into(),
        ),
        (
            index,
            size,
            some,
            proof.to_vec(),
            *root,
            "wrong leaf".into(),
        ),
        (
            index,
            size,
            *leaf,
            proof.to_vec(),
            empty_root(),
            "empty root".into(),
        ),
        (
            index,
            size,
            *leaf,
            proof.to_vec(),
            some,
            "random root".into(),
        ),
        (
            index,
            size,
            *leaf,
            with_end(*root),
            *root,
            "trailing root".into(),
        ),
        (
            index,
            size,
            *leaf,
            with_end([0; 32]),
            *root,
            "trailing zeros".into(),
        ),
        (
            index,
            size,
            *leaf,
            with_front(*root),
            *root,
            "preceding root".into(),
        ),
    ];
    for i in 0..proof.len() {
        probes.push((
            index,
            size,
            *leaf,
            flip(proof, i),
            *root,
            format!("flipped [{i}]"),
        ));
    }
    if !proof.is_empty() {
        probes.push((
            index,
            size,
            *leaf,
            proof[..proof.len() - 1].to_vec(),
            *root,
            "removed".into(),
        ));
    }
    if proof.len() > 1 {
        let inserted = [&proof[..1], &[some], &proof[1..]].concat();
        probes.push((index, size, *leaf, inserted, *root, "inserted".into()));
    }
    for (i, s, l, p, r, what) in probes {
        // A probe can coincide with the original (index ^ 2 when the size allows it is not
        // one of them: it changes the index).
        if (i, s, l, &p, r) == (index, size, *leaf, &proof.to_vec(), *root) {
            continue;
        }
        assert!(
            verify_inclusion(i, s, &l, &p, &r).is_err(),
            "inclusion of {index} in {size}: probe '{what}' verified"
        );
    }
}

/// transparency-dev's consistency probes: every one must fail.
fn corrupt_consistency(old: u64, new: u64, r1: &Hash, r2: &Hash, proof: &[Hash]) {
    let with_end = |x: Hash| [proof, &[x]].concat();
    let with_front = |x: Hash| [&[x], proof].concat();
    let mut probes: Vec<(u64, u64, Hash, Hash, Vec<Hash>, String)> = vec![
        (old - 1, new, *r1, *r2, proof.to_vec(), "old - 1".into()),
        (old + 1, new, *r1, *r2, proof.to_vec(), "old + 1".into()),
        (old ^ 2, new, *r1, *r2, proof.to_vec(), "old ^ 2".into()),
        (old, new * 2, *r1, *r2, proof.to_vec(), "new * 2".into()),
        (old, new / 2, *r1, *r2, proof.to_vec(), "new / 2".into()),
        (old, new, [7; 32], *r2, proof.to_vec(), "wrong root1".into()),
        (old, new, *r1, [7; 32], proof.to_vec(), "wrong root2".into()),
        (old, new, *r2, *r1, proof.to_vec(), "swapped roots".into()),
        (old, new, *r1, *r2, vec![], "empty proof".into()),
        (
            old,
            new,
            *r1,
            *r2,
            with_end([0; 32]),
            "trailing zeros".into(),
        ),
        (old, new, *r1, *r2, with_end(*r1), "trailing root1".into()),
        (old, new, *r1, *r2, with_end(*r2), "trailing root2".into()),
        (
            old,
            new,
            *r1,
            *r2,
            with_front([0; 32]),
            "preceding zeros".into(),
        ),
        (
            old,
            new,
            *r1,
            *r2,
            with_front(*r1),
            "preceding root1".into(),
        ),
        (
            old,
            new,
            *r1,
            *r2,
            with_front(*r2),
            "preceding root2".into(),
        ),
        (
            old,
            new,
            *r1,
            *r2,
            with_front(proof[0]),
            "preceding proof[0]".into(),
        ),
        (
            old,
            new,
            *r1,
            *r2,
            proof[..proof.len() - 1].to_vec(),
            "truncated".into(),
        ),
    ];
    for i in 0..proof.len() {
        probes.push((old, new, *r1, *r2, flip(proof, i), format!("flipped [{i}]")));
    }
    for (o, n, a, b, p, what) in probes {
        if (o, n) == (0, new) && p.is_empty() {
            continue; // the empty tree is consistent with anything
        }
        assert!(
            verify_consistency(o, n, &a, &b, &p).is_err(),
            "consistency {old} -> {new}: probe '{what}' verified"
        );
    }
}

#[test]
fn reference_proofs_refuse_every_corruption() {
    let leaves: Vec<Hash> = entries().iter().map(|e| leaf_hash(e)).collect();
    for (index, size, proof) in inclusion_vectors() {
        let root = h(ROOTS[size as usize - 1]);
        corrupt_inclusion(index, size, &leaves[index as usize], &proof, &root);
    }
    for (old, new, proof) in consistency_vectors() {
        if proof.is_empty() {
            continue;
        }
        let (r1, r2) = (h(ROOTS[old as usize - 1]), h(ROOTS[new as usize - 1]));
        corrupt_consistency(old, new, &r1, &r2, &proof);
    }
}

fn tree_of(n: u64) -> (MemoryTree, Vec<Hash>) {
    let leaves: Vec<Hash> = (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect();
    (MemoryTree::from_leaf_hashes(leaves.iter().copied()), leaves)
}

#[test]
fn every_proof_of_every_small_tree_verifies_and_has_the_predicted_length() {
    const N: u64 = 70;
    let (tree, leaves) = tree_of(N);
    let roots: Vec<Hash> = (0..=N)
        .map(|n| root_from_leaf_hashes(&leaves[..n as usize]))
        .collect();
    for size in 0..=N {
        assert_eq!(
            tree.root_at(size).unwrap(),
            roots[size as usize],
            "root at {size}"
        );
        for index in 0..size {
            let proof = tree.inclusion_proof(index, size).unwrap();
            assert_eq!(proof.len(), inclusion_proof_len(index, size));
            verify_inclusion(
                index,
                size,
                &leaves[index as usize],
                &proof,
                &roots[size as usize],
            )
            .unwrap_or_else(|e| panic!("inclusion {index} in {size}: {e}"));
        }
        for old in 0..=size {
            let proof = tree.consistency_proof(old, size).unwrap();
            assert_eq!(
                proof.len(),
                consistency_proof_len(old, size),
                "{old} -> {size}"
            );
            verify_consistency(
                old,
                size,
                &roots[old as usize],
                &roots[size as usize],
                &proof,
            )
            .unwrap_or_else(|e| panic!("consistency {old} -> {size}: {e}"));
        }
    }
    assert_eq!(tree.root(), roots[N as usize]);
}

#[test]
fn every_proof_of_trees_up_to_20_refuses_every_corruption() {
    const N: u64 = 20;
    let (tree, leaves) = tree_of(N);
    for size in 1..=N {
        let root = tree.root_at(size).unwrap();
        for index in 0..size {
            let proof = tree.inclusion_proof(index, size).unwrap();
            corrupt_inclusion(index, size, &leaves[index as usize], &proof, &root);
        }
        for old in 1..size {
            let proof = tree.consistency_proof(old, size).unwrap();
            let old_root = tree.root_at(old).unwrap();
            corrupt_consistency(old, size, &old_root, &root, &proof);
        }
    }
}

#[test]
fn errors_name_what_was_expected_and_what_was_given() {
    let (tree, leaves) = tree_of(8);
    let root = tree.root();
    let proof = tree.inclusion_proof(3, 8).unwrap();
    assert_eq!(
        verify_inclusion(3, 8, &leaves[3], &proof[..2], &root).unwrap_err(),
        ProofError::InclusionProofLength {
            index: 3,
            size: 8,
            expected: 3,
            got: 2
        }
    );
    assert_eq!(
        verify_inclusion(8, 8, &leaves[3], &proof, &root).unwrap_err(),
        ProofError::IndexOutOfRange { index: 8, size: 8 }
    );
    let err = verify_inclusion(3, 8, &leaves[4], &proof, &root).unwrap_err();
    assert!(
        matches!(&err, ProofError::RootMismatch { which: "tree", expected, .. } if *expected == hex::encode(root)),
        "{err}"
    );

    let old = tree.root_at(5).unwrap();
    let proof = tree.consistency_proof(5, 8).unwrap();
    assert_eq!(
        verify_consistency(8, 5, &root, &old, &proof).unwrap_err(),
        ProofError::SizesOutOfOrder {
            old_size: 8,
            new_size: 5
        }
    );
    assert_eq!(
        verify_consistency(5, 8, &old, &root, &[]).unwrap_err(),
        ProofError::ConsistencyProofLength {
            old_size: 5,
            new_size: 8,
            expected: proof.len(),
            got: 0
        }
    );
    let err = verify_consistency(8, 8, &root, &old, &[]).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "two trees of size 8 have different roots: {} and {} (a fork)",
            hex::encode(root),
            hex::encode(old)
        )
    );
    let err = verify_consistency(5, 8, &[1; 32], &root, &proof).unwrap_err();
    assert!(
        matches!(
            err,
            ProofError::RootMismatch {
                which: "old tree",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn proofs_beyond_the_stored_log_are_read_errors_not_panics() {
    let (tree, _) = tree_of(5);
    let err = tree.inclusion_proof(2, 9).unwrap_err();
    assert!(matches!(err, ProofError::Read(_)), "{err}");
    assert!(err.to_string().contains("the log has 5 leaves"), "{err}");
    assert!(matches!(
        tree.consistency_proof(3, 9).unwrap_err(),
        ProofError::Read(_)
    ));
    assert!(matches!(tree.root_at(6).unwrap_err(), ProofError::Read(_)));
    assert_eq!(
        tree.consistency_proof(6, 5).unwrap_err(),
        ProofError::SizesOutOfOrder {
            old_size: 6,
            new_size: 5
        }
    );
}

#[test]
fn verifiers_take_extreme_sizes_without_panicking() {
    let x = [3u8; 32];
    let sizes = [0, 1, 2, 3, u64::MAX / 2, u64::MAX - 1, u64::MAX];
    for &a in &sizes {
        for &b in &sizes {
            let proof = vec![x; consistency_proof_len(a, b)];
            let _ = verify_consistency(a, b, &x, &x, &proof);
            let _ = verify_consistency(a, b, &x, &x, &[x; 70]);
            let proof = vec![x; inclusion_proof_len(a, b)];
            let _ = verify_inclusion(a, b, &x, &proof, &x);
            let _ = verify_inclusion(a, b, &x, &[], &x);
        }
    }
    assert_eq!(inclusion_proof_len(0, u64::MAX), 64);
    assert_eq!(inclusion_proof_len(u64::MAX - 1, u64::MAX), 63);
}
