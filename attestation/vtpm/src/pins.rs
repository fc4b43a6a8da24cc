//! PCR pins: which sha256-bank values each pinned PCR may hold.
//!
//! What to pin on Azure (see `shared/platform/azure-vtpm.md` §1.9): PCR 4, 9 and 11 from
//! [`crate::predict`], PCR 12 and 13 as zero (nothing extra passed to the stub, no sysexts).
//! Never pin PCR 0-3 and 5 (Microsoft's firmware), 6 (the VM unique id on Azure) or 10 (IMA);
//! pin PCR 7 (Secure Boot policy) only with observed values.

use std::collections::BTreeMap;

use crate::check::{CheckId, CheckResult, Verification};

/// PCRs on a PC Client TPM.
pub const PCR_COUNT: u8 = 24;

/// Why a pin was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinError {
    /// PCR index 24 or above.
    #[error("PCR index {index} is out of range 0..24")]
    IndexOutOfRange {
        /// The index given.
        index: u8,
    },
    /// A pin with no allowed value could never pass.
    #[error("PCR {index} pinned to no value")]
    NoValues {
        /// The index given.
        index: u8,
    },
}

/// A PCR policy: for each pinned PCR, the sha256 values it may hold (any one of them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PcrPins {
    pins: BTreeMap<u8, Vec<[u8; 32]>>,
}

impl PcrPins {
    /// No pins yet. Verifying against an empty pin set fails ([`CheckId::PcrPinsPresent`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Pin PCR `index` to the given allowed values (added to any already allowed).
    pub fn pin(
        mut self,
        index: u8,
        values: impl IntoIterator<Item = [u8; 32]>,
    ) -> Result<Self, PinError> {
        if index >= PCR_COUNT {
            return Err(PinError::IndexOutOfRange { index });
        }
        let allowed = self.pins.entry(index).or_default();
        for value in values {
            if !allowed.contains(&value) {
                allowed.push(value);
            }
        }
        if allowed.is_empty() {
            self.pins.remove(&index);
            return Err(PinError::NoValues { index });
        }
        Ok(self)
    }

    /// Pin PCR `index` to all zeros (never extended since reset).
    pub fn pin_zero(self, index: u8) -> Result<Self, PinError> {
        self.pin(index, [[0u8; 32]])
    }

    /// The values allowed for PCR `index`, if pinned.
    pub fn allowed(&self, index: u8) -> Option<&[[u8; 32]]> {
        self.pins.get(&index).map(Vec::as_slice)
    }

    /// The pinned PCRs and their allowed values, by index.
    pub fn iter(&self) -> impl Iterator<Item = (u8, &[[u8; 32]])> {
        self.pins.iter().map(|(i, v)| (*i, v.as_slice()))
    }

    /// True if nothing is pinned.
    pub fn is_empty(&self) -> bool {
        self.pins.is_empty()
    }

    /// Check `quoted` (PCR index to sha256 value) against every pin: one
    /// [`CheckId::Pcr`] per pinned PCR, plus [`CheckId::PcrPinsPresent`].
    pub fn check(&self, quoted: &BTreeMap<u8, [u8; 32]>) -> Verification {
        let mut v = Verification::default();
        v.push(CheckResult::check(
            CheckId::PcrPinsPresent,
            !self.pins.is_empty(),
            || ("at least one pinned PCR".into(), "no pins".into()),
        ));
        for (&index, allowed) in &self.pins {
            let id = CheckId::Pcr(index);
            let expected = || {
                let list: Vec<String> = allowed.iter().map(hex::encode).collect();
                format!("one of [{}]", list.join(", "))
            };
            v.push(match quoted.get(&index) {
                Some(got) if allowed.contains(got) => CheckResult::pass(id),
                Some(got) => CheckResult::fail(id, expected(), hex::encode(got)),
                None => CheckResult::fail(id, expected(), "PCR not in the quote"),
            });
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_refuse_bad_indices_and_empty_sets() {
        assert_eq!(
            PcrPins::new().pin_zero(24),
            Err(PinError::IndexOutOfRange { index: 24 })
        );
        assert_eq!(
            PcrPins::new().pin(4, []),
            Err(PinError::NoValues { index: 4 })
        );
    }

    #[test]
    fn every_pin_is_reported() {
        let pins = PcrPins::new()
            .pin(4, [[1; 32], [2; 32]])
            .unwrap()
            .pin_zero(12)
            .unwrap()
            .pin_zero(13)
            .unwrap();
        let quoted = BTreeMap::from([(4, [2; 32]), (12, [9; 32])]);
        let v = pins.check(&quoted);
        assert_eq!(v.checks().len(), 4);
        assert_eq!(v.failed_ids(), vec![CheckId::Pcr(12), CheckId::Pcr(13)]);
        assert!(!PcrPins::new().check(&quoted).passed());
    }
}
