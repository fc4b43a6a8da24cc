//! RFC 6962 / RFC 9162 §2.1 Merkle trees: hashing, tree heads, and inclusion and consistency
//! proofs, both made (from stored hashes) and checked.
//!
//! **Hashing** (RFC 9162 §2.1.1): a leaf is `SHA-256(0x00 ‖ entry)`, an inner node
//! `SHA-256(0x01 ‖ left ‖ right)`, the empty tree `SHA-256("")`. A tree of `n > 1` leaves splits at
//! `k`, the largest power of two below `n`: `MTH(D[n]) = node(MTH(D[0:k]), MTH(D[k:n]))`.
//!
//! **Storage model.** Every subtree the log ever completes is a [`NodeId`]: `2^level` leaves
//! starting at leaf `index << level`. Once complete it never changes, so a log stores each one as
//! it completes (append-only, one row per node; [`MemoryTree`] does it in memory, the control
//! plane will do it in its database) and any tree head or proof for any size up to the current
//! one is a fold over a few stored nodes: the proof functions here ask a [`HashReader`] for
//! exactly those nodes, in one batch.
//!
//! **Verification** follows RFC 9162 §2.1.3.2 (inclusion) and §2.1.4.2 (consistency) step by
//! step; before running either, the proof's length is checked against the length a proof for
//! those sizes must have, so a wrong proof is refused with what was expected.
//!
//! **Trusts:** the [`HashReader`] to return the hashes it stores (a proof made from wrong hashes
//! simply fails verification). **Checks:** every index and size against the tree, every proof's
//! length, and the root each proof reconstructs. Nothing here panics on any input.

use std::fmt;
use std::ops::Range;

use sha2::{Digest as _, Sha256};

/// Bytes in a SHA-256 hash: leaf hashes, node hashes and roots.
pub const HASH_LEN: usize = 32;

/// A SHA-256 hash in the tree: a leaf hash, a node hash or a root.
pub type Hash = [u8; HASH_LEN];

const LEAF_PREFIX: u8 = 0x00;
const NODE_PREFIX: u8 = 0x01;

/// The hash of a log entry as a leaf: `SHA-256(0x00 ‖ entry)`.
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([LEAF_PREFIX]);
    h.update(entry);
    h.finalize().into()
}

/// The hash of an inner node: `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([NODE_PREFIX]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree: `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The root of the tree whose leaf hashes are `leaves`, computed directly from the definition
/// (`O(n)` hashes). For a log that grows, keep a [`MemoryTree`] or a stored set of nodes instead.
pub fn root_from_leaf_hashes(leaves: &[Hash]) -> Hash {
    match leaves {
        [] => empty_root(),
        [leaf] => *leaf,
        _ => {
            // `len >= 2`, so the split is in 1..len.
            let k = largest_power_of_two_below(leaves.len() as u64) as usize;
            let (left, right) = leaves.split_at(k);
            node_hash(&root_from_leaf_hashes(left), &root_from_leaf_hashes(right))
        }
    }
}

fn hex32(hash: &Hash) -> String {
    hex::encode(hash)
}

/// A complete subtree: the `2^level` leaves starting at leaf `index << level`. Level 0 nodes are
/// the leaf hashes themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    /// Height above the leaves (0 = a leaf); at most 63.
    pub level: u8,
    /// Position among the nodes of that level, left to right.
    pub index: u64,
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node (level {}, index {})", self.level, self.index)
    }
}

/// A store of the complete subtrees of a log, which the proof functions read from.
pub trait HashReader {
    /// The hashes of `ids`, in the same order. An implementation returns an error for a node it
    /// does not hold (the log is smaller than asked) or cannot read.
    fn read_nodes(&self, ids: &[NodeId]) -> Result<Vec<Hash>, HashReadError>;
}

/// A [`HashReader`] could not give the hashes asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot read the log's stored hashes: {reason}")]
pub struct HashReadError {
    /// What went wrong, from the store.
    pub reason: String,
}

/// Why a proof could not be made or did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The leaf is not in the tree.
    #[error("leaf index {index} is not in a tree of {size} leaves")]
    IndexOutOfRange {
        /// The leaf index asked about.
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// A consistency proof from a bigger tree to a smaller one: the log shrank.
    #[error("a tree of {old_size} leaves cannot be a prefix of a tree of {new_size} leaves (the log would have shrunk)")]
    SizesOutOfOrder {
        /// The size said to be the older tree's.
        old_size: u64,
        /// The size said to be the newer tree's.
        new_size: u64,
    },
    /// An inclusion proof of the wrong length.
    #[error("an inclusion proof of leaf {index} in a tree of {size} leaves has {expected} hashes, got {got}")]
    InclusionProofLength {
        /// The leaf index.
        index: u64,
        /// The tree size.
        size: u64,
        /// The length such a proof has.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// A consistency proof of the wrong length.
    #[error("a consistency proof from size {old_size} to size {new_size} has {expected} hashes, got {got}")]
    ConsistencyProofLength {
        /// The older tree's size.
        old_size: u64,
        /// The newer tree's size.
        new_size: u64,
        /// The length such a proof has.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// Two trees of the same size with different roots: a fork.
    #[error("two trees of size {size} have different roots: {old_root} and {new_root} (a fork)")]
    SameSizeDifferentRoots {
        /// The size.
        size: u64,
        /// The first root, hex.
        old_root: String,
        /// The second root, hex.
        new_root: String,
    },
    /// The proof reconstructs another root than the one it was checked against.
    #[error("the proof reconstructs the {which} root {computed}, expected {expected}")]
    RootMismatch {
        /// `tree`, `old tree` or `new tree`.
        which: &'static str,
        /// The root the proof was checked against, hex.
        expected: String,
        /// The root the proof leads to, hex.
        computed: String,
    },
    /// The hashes needed to make the proof could not be read.
    #[error(transparent)]
    Read(#[from] HashReadError),
}

/// The largest power of two strictly below `n`; `n` must be at least 2 (1 otherwise).
fn largest_power_of_two_below(n: u64) -> u64 {
    if n < 2 {
        return 1;
    }
    1 << (63 - (n - 1).leading_zeros())
}

/// Appends the complete subtrees that make up leaves `lo..hi`, left to right. For the ranges the
/// RFC 9162 tree is made of (`lo` a multiple of a power of two at least `hi - lo`), they come out
/// largest first, and folding them from the right gives `MTH(D[lo:hi])`.
fn perfect_subtrees(range: Range<u64>, out: &mut Vec<NodeId>) {
    let (mut lo, hi) = (range.start, range.end);
    while lo < hi {
        let remaining = hi - lo;
        // `remaining >= 1`, so this is at most 63.
        let mut level = 63 - remaining.leading_zeros();
        if lo != 0 {
            level = level.min(lo.trailing_zeros());
        }
        out.push(NodeId {
            level: level as u8,
            index: lo >> level,
        });
        lo += 1 << level;
    }
}

/// `MTH` of a range from its complete subtrees (largest first): fold from the right.
fn fold_subtrees(hashes: &[Hash]) -> Hash {
    let mut from_right = hashes.iter().rev();
    match from_right.next() {
        None => empty_root(),
        Some(last) => from_right.fold(*last, |acc, left| node_hash(left, &acc)),
    }
}

/// The hash of each range, read from `reader` in one batch.
fn range_hashes<R: HashReader + ?Sized>(
    reader: &R,
    ranges: &[Range<u64>],
) -> Result<Vec<Hash>, ProofError> {
    let mut ids = Vec::new();
    let mut spans = Vec::with_capacity(ranges.len());
    for range in ranges {
        let start = ids.len();
        perfect_subtrees(range.clone(), &mut ids);
        spans.push(start..ids.len());
    }
    let hashes = reader.read_nodes(&ids)?;
    if hashes.len() != ids.len() {
        return Err(HashReadError {
            reason: format!("asked for {} hashes, got {}", ids.len(), hashes.len()),
        }
        .into());
    }
    spans
        .into_iter()
        .map(|span| {
            hashes.get(span).map(fold_subtrees).ok_or_else(|| {
                ProofError::from(HashReadError {
                    reason: "a span of the hashes read is missing".into(),
                })
            })
        })
        .collect()
}

/// The root of the first `size` leaves of the log in `reader`.
pub fn tree_hash<R: HashReader + ?Sized>(reader: &R, size: u64) -> Result<Hash, ProofError> {
    let mut hashes = range_hashes(reader, std::slice::from_ref(&(0..size)))?;
    Ok(hashes.pop().unwrap_or_else(empty_root))
}

/// The ranges whose hashes make `PATH(index, D[0:size])` (RFC 9162 §2.1.3.1), leaf first.
fn inclusion_ranges(index: u64, size: u64) -> Vec<Range<u64>> {
    let mut path = Vec::new();
    let (mut lo, mut hi) = (0, size);
    while hi - lo > 1 {
        let k = largest_power_of_two_below(hi - lo);
        if index < lo + k {
            path.push(lo + k..hi);
            hi = lo + k;
        } else {
            path.push(lo..lo + k);
            lo += k;
        }
    }
    // The recursion appends on the way back up: the deepest sibling comes first.
    path.reverse();
    path
}

/// The ranges whose hashes make `PROOF(old_size, D[0:new_size])` (RFC 9162 §2.1.4.1), for
/// `0 < old_size < new_size`.
fn consistency_ranges(old_size: u64, new_size: u64) -> Vec<Range<u64>> {
    let mut path = Vec::new();
    let (mut lo, mut hi) = (0, new_size);
    // `m` counts the old tree's leaves inside `lo..hi`; `whole` is SUBPROOF's `b`: true while
    // the subtree is still the old tree's own root.
    let (mut m, mut whole) = (old_size, true);
    while m < hi - lo {
        let k = largest_power_of_two_below(hi - lo);
        if m <= k {
            path.push(lo + k..hi);
            hi = lo + k;
        } else {
            path.push(lo..lo + k);
            lo += k;
            m -= k;
            whole = false;
        }
    }
    if !whole {
        path.push(lo..hi);
    }
    path.reverse();
    path
}

/// The inclusion proof of leaf `index` in the tree of the first `size` leaves (RFC 9162
/// §2.1.3.1): sibling hashes from the leaf up.
pub fn inclusion_proof<R: HashReader + ?Sized>(
    reader: &R,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    range_hashes(reader, &inclusion_ranges(index, size))
}

/// The consistency proof that the tree of the first `old_size` leaves is a prefix of the tree of
/// the first `new_size` (RFC 9162 §2.1.4.1). Empty when the sizes are equal or `old_size` is 0.
pub fn consistency_proof<R: HashReader + ?Sized>(
    reader: &R,
    old_size: u64,
    new_size: u64,
) -> Result<Vec<Hash>, ProofError> {
    if old_size > new_size {
        return Err(ProofError::SizesOutOfOrder { old_size, new_size });
    }
    if old_size == 0 || old_size == new_size {
        return Ok(Vec::new());
    }
    range_hashes(reader, &consistency_ranges(old_size, new_size))
}

/// `(inner, border)`: the hashes of an inclusion proof of `index` in a tree of `size` leaves that
/// lie below the point where the path leaves the tree's right border, and those on it.
fn inclusion_shape(index: u64, size: u64) -> (u32, u32) {
    let inner = 64 - (index ^ (size - 1)).leading_zeros();
    let border = index.checked_shr(inner).unwrap_or(0).count_ones();
    (inner, border)
}

/// How many hashes an inclusion proof of `index` in a tree of `size > index` leaves has.
pub fn inclusion_proof_len(index: u64, size: u64) -> usize {
    if index >= size {
        return 0;
    }
    let (inner, border) = inclusion_shape(index, size);
    (inner + border) as usize
}

/// How many hashes a consistency proof from `old_size` to `new_size` has.
pub fn consistency_proof_len(old_size: u64, new_size: u64) -> usize {
    if old_size == 0 || old_size >= new_size {
        return 0;
    }
    // The old tree's last leaf is on the old tree's right border; its proof in the new tree,
    // minus the levels inside the old tree's rightmost complete subtree, plus that subtree's own
    // hash unless it is the whole old tree (then the verifier already has it: the old root).
    let shift = old_size.trailing_zeros();
    let (inner, border) = inclusion_shape(old_size - 1, new_size);
    let start = u32::from(!old_size.is_power_of_two());
    (start + inner.saturating_sub(shift) + border) as usize
}

/// The root that `proof` leads to from `leaf` at `index` in a tree of `size` leaves (RFC 9162
/// §2.1.3.2, steps 1 to 4).
pub fn root_from_inclusion_proof(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
) -> Result<Hash, ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let expected = inclusion_proof_len(index, size);
    let length_error = || ProofError::InclusionProofLength {
        index,
        size,
        expected,
        got: proof.len(),
    };
    if proof.len() != expected {
        return Err(length_error());
    }
    let (mut f_n, mut s_n) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s_n == 0 {
            return Err(length_error());
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            while f_n & 1 == 0 && f_n != 0 {
                f_n >>= 1;
                s_n >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n != 0 {
        return Err(length_error());
    }
    Ok(r)
}

/// Checks that `leaf` is leaf `index` of the tree of `size` leaves whose root is `root`
/// (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    let computed = root_from_inclusion_proof(index, size, leaf, proof)?;
    if computed != *root {
        return Err(ProofError::RootMismatch {
            which: "tree",
            expected: hex32(root),
            computed: hex32(&computed),
        });
    }
    Ok(())
}

/// Checks that the tree of `old_size` leaves with root `old_root` is a prefix of the tree of
/// `new_size` leaves with root `new_root` (RFC 9162 §2.1.4.2). Equal sizes need equal roots and
/// an empty proof; the empty tree is a prefix of every tree (empty proof).
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::SizesOutOfOrder { old_size, new_size });
    }
    let expected = consistency_proof_len(old_size, new_size);
    let length_error = || ProofError::ConsistencyProofLength {
        old_size,
        new_size,
        expected,
        got: proof.len(),
    };
    if proof.len() != expected {
        return Err(length_error());
    }
    if old_size == new_size {
        if old_root != new_root {
            return Err(ProofError::SameSizeDifferentRoots {
                size: old_size,
                old_root: hex32(old_root),
                new_root: hex32(new_root),
            });
        }
        return Ok(());
    }
    if old_size == 0 {
        return Ok(());
    }

    // Step 1-2: a power-of-two old tree is a complete subtree of the new one; its root starts
    // the path.
    let mut path: Vec<&Hash> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        path.push(old_root);
    }
    path.extend(proof);
    let Some((&seed, rest)) = path.split_first() else {
        return Err(length_error());
    };
    // Step 3-4.
    let (mut f_n, mut s_n) = (old_size - 1, new_size - 1);
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    // Step 5-6.
    let (mut f_r, mut s_r) = (*seed, *seed);
    for &c in rest {
        if s_n == 0 {
            return Err(length_error());
        }
        if f_n & 1 == 1 || f_n == s_n {
            f_r = node_hash(c, &f_r);
            s_r = node_hash(c, &s_r);
            while f_n & 1 == 0 && f_n != 0 {
                f_n >>= 1;
                s_n >>= 1;
            }
        } else {
            s_r = node_hash(&s_r, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    // Step 7.
    if s_n != 0 {
        return Err(length_error());
    }
    if f_r != *old_root {
        return Err(ProofError::RootMismatch {
            which: "old tree",
            expected: hex32(old_root),
            computed: hex32(&f_r),
        });
    }
    if s_r != *new_root {
        return Err(ProofError::RootMismatch {
            which: "new tree",
            expected: hex32(new_root),
            computed: hex32(&s_r),
        });
    }
    Ok(())
}

/// A log's complete subtrees, in memory: what a database-backed store keeps, one row per
/// [`NodeId`]. Appending a leaf stores it and every subtree it completes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryTree {
    /// `levels[l][i]` is node `(l, i)`. `levels[l].len()` is `size >> l`.
    levels: Vec<Vec<Hash>>,
}

impl MemoryTree {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// A log of the given leaf hashes, in order.
    pub fn from_leaf_hashes<I: IntoIterator<Item = Hash>>(leaves: I) -> Self {
        let mut tree = Self::new();
        for leaf in leaves {
            tree.append_leaf_hash(leaf);
        }
        tree
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// Appends an entry (hashed as a leaf); returns its index.
    pub fn append_entry(&mut self, entry: &[u8]) -> u64 {
        self.append_leaf_hash(leaf_hash(entry))
    }

    /// Appends a leaf hash; returns its index.
    pub fn append_leaf_hash(&mut self, leaf: Hash) -> u64 {
        let index = self.size();
        let mut carry = leaf;
        let mut level = 0;
        loop {
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            let Some(nodes) = self.levels.get_mut(level) else {
                break;
            };
            nodes.push(carry);
            // An even count means the last two nodes are siblings: their parent is complete.
            if nodes.len() % 2 != 0 {
                break;
            }
            match nodes.as_slice() {
                [.., left, right] => carry = node_hash(left, right),
                _ => break,
            }
            level += 1;
        }
        index
    }

    /// The current root.
    pub fn root(&self) -> Hash {
        // The peaks: at each level, an odd count leaves one node without a sibling yet.
        let peaks: Vec<Hash> = self
            .levels
            .iter()
            .rev()
            .filter(|nodes| nodes.len() % 2 == 1)
            .filter_map(|nodes| nodes.last().copied())
            .collect();
        fold_subtrees(&peaks)
    }

    /// The root of the first `size` leaves.
    pub fn root_at(&self, size: u64) -> Result<Hash, ProofError> {
        tree_hash(self, size)
    }

    /// The inclusion proof of leaf `index` in the tree of the first `size` leaves.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, ProofError> {
        inclusion_proof(self, index, size)
    }

    /// The consistency proof from the first `old_size` leaves to the first `new_size`.
    pub fn consistency_proof(&self, old_size: u64, new_size: u64) -> Result<Vec<Hash>, ProofError> {
        consistency_proof(self, old_size, new_size)
    }
}

impl HashReader for MemoryTree {
    fn read_nodes(&self, ids: &[NodeId]) -> Result<Vec<Hash>, HashReadError> {
        ids.iter()
            .map(|id| {
                usize::try_from(id.index)
                    .ok()
                    .and_then(|i| self.levels.get(usize::from(id.level))?.get(i))
                    .copied()
                    .ok_or_else(|| HashReadError {
                        reason: format!("{id} is not stored (the log has {} leaves)", self.size()),
                    })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
