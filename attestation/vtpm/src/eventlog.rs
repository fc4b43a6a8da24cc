//! The TCG2 crypto-agile firmware event log (TCG PC Client Platform Firmware Profile, §10:
//! TCG_PCClientPCREvent, TCG_EfiSpecIdEvent, TCG_PCR_EVENT2), as Linux exposes it in
//! `/sys/kernel/security/tpm0/binary_bios_measurements`, and its replay to PCR values.
//!
//! The log is unauthenticated: replaying it yields what the PCRs *should* hold if the log is
//! true. Its value to a verifier is explanation (which event made a PCR differ from its pin)
//! and cross-checking the predictor ([`crate::predict`]); the quote's PCR values are the
//! evidence. All integers are little-endian (unlike TPM structures).

use sha1::Sha1;
use sha2::{Digest, Sha256, Sha384, Sha512};

use crate::reader::{Reader, Truncated};
use crate::tpm::{alg, MAX_DIGEST_SIZE};

/// Event types used here (TCG PC Client PFP, §10.4.1).
pub mod event_type {
    /// EV_NO_ACTION: informational, never extended.
    pub const EV_NO_ACTION: u32 = 0x0000_0003;
    /// EV_SEPARATOR.
    pub const EV_SEPARATOR: u32 = 0x0000_0004;
    /// EV_EVENT_TAG (used by the Linux EFI stub for PCR 9).
    pub const EV_EVENT_TAG: u32 = 0x0000_0006;
    /// EV_IPL (used by systemd-stub for PCR 11).
    pub const EV_IPL: u32 = 0x0000_000d;
    /// EV_EFI_BOOT_SERVICES_APPLICATION: an Authenticode hash of a loaded PE image.
    pub const EV_EFI_BOOT_SERVICES_APPLICATION: u32 = 0x8000_0003;
    /// EV_EFI_ACTION: a fixed ASCII string (boot-manager actions).
    pub const EV_EFI_ACTION: u32 = 0x8000_0007;
}

/// Signature of the TCG_EfiSpecIdEvent that starts a crypto-agile log.
pub const SPEC_ID_SIGNATURE: &[u8; 16] = b"Spec ID Event03\0";
/// Signature of the startup-locality EV_NO_ACTION event (PFP §10.4.5.3).
pub const STARTUP_LOCALITY_SIGNATURE: &[u8; 16] = b"StartupLocality\0";
/// PCRs replayed (PC Client: 24).
pub const PCR_COUNT: usize = 24;
/// The most algorithms a Spec ID event may list here (the registry has fewer hashes).
pub const MAX_ALGORITHMS: usize = 16;

/// Why bytes are not a crypto-agile event log, or it cannot be replayed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventLogError {
    /// The input ended inside a field.
    #[error(transparent)]
    Truncated(#[from] Truncated),
    /// The first event is not the EV_NO_ACTION "Spec ID Event03" of a crypto-agile log (a
    /// SHA-1-only legacy log, or not a log).
    #[error(
        "the first event is not a TCG_EfiSpecIdEvent \"Spec ID Event03\" (not a crypto-agile log)"
    )]
    NotCryptoAgile,
    /// The Spec ID event lists no algorithm, or more than [`MAX_ALGORITHMS`].
    #[error("TCG_EfiSpecIdEvent lists {count} algorithms (1..={MAX_ALGORITHMS} accepted)")]
    AlgorithmCount {
        /// The count found.
        count: u32,
    },
    /// The Spec ID event gives a known hash a wrong digest size, or any hash one above 64.
    #[error("TCG_EfiSpecIdEvent gives algorithm {alg:#06x} digest size {size}")]
    DigestSize {
        /// The algorithm.
        alg: u16,
        /// The size given.
        size: u16,
    },
    /// An algorithm is listed twice (in the Spec ID event, or in one event's digests).
    #[error("algorithm {alg:#06x} appears twice in {structure}")]
    DuplicateAlgorithm {
        /// The algorithm.
        alg: u16,
        /// Where.
        structure: &'static str,
    },
    /// An event carries a digest for an algorithm the Spec ID event did not list (its size is
    /// unknown, so the rest of the log cannot be parsed).
    #[error("event {event} has a digest of algorithm {alg:#06x}, not listed in the Spec ID event")]
    UnknownAlgorithm {
        /// Event number (the Spec ID event is 0).
        event: usize,
        /// The algorithm.
        alg: u16,
    },
    /// An event carries more digests than the log has algorithms.
    #[error("event {event} has {count} digests, the log has fewer algorithms")]
    DigestCount {
        /// Event number.
        event: usize,
        /// The count found.
        count: u32,
    },
    /// Bytes left inside a structure that should have been consumed.
    #[error("{count} trailing bytes in {structure}")]
    TrailingBytes {
        /// The structure.
        structure: &'static str,
        /// How many.
        count: usize,
    },
    /// Replay: the log's algorithms do not include the bank asked for, or no hash
    /// implementation is available for it.
    #[error("cannot replay bank {alg:#06x}: not in the log or not supported (sha1, sha256, sha384, sha512)")]
    Bank {
        /// The algorithm.
        alg: u16,
    },
    /// Replay: an extending event has no digest for the bank replayed.
    #[error("event {event} has no digest for bank {alg:#06x}")]
    MissingDigest {
        /// Event number.
        event: usize,
        /// The bank.
        alg: u16,
    },
    /// Replay: an extending event names a PCR above 23.
    #[error("event {event} extends PCR {pcr}, outside 0..24")]
    PcrOutOfRange {
        /// Event number.
        event: usize,
        /// The PCR index.
        pcr: u32,
    },
}

/// One algorithm of the log and its digest size (TCG_EfiSpecIdEventAlgorithmSize).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlgorithmSize {
    /// TPM_ALG_ID.
    pub alg: u16,
    /// Digest size in bytes.
    pub digest_size: u16,
}

/// One TCG_PCR_EVENT2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Event number in the log (the Spec ID event is 0, so the first of these is 1).
    pub number: usize,
    /// PCR extended.
    pub pcr_index: u32,
    /// Event type (see [`event_type`]).
    pub event_type: u32,
    /// (algorithm, digest) pairs, in log order.
    pub digests: Vec<(u16, Vec<u8>)>,
    /// The event data.
    pub data: Vec<u8>,
}

impl Event {
    /// The digest for one algorithm, if present.
    pub fn digest(&self, alg: u16) -> Option<&[u8]> {
        self.digests
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, d)| d.as_slice())
    }

    /// The sha256 digest, if present.
    pub fn sha256(&self) -> Option<[u8; 32]> {
        self.digest(alg::SHA256)?.try_into().ok()
    }
}

/// A parsed crypto-agile event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventLog {
    /// The algorithms of the Spec ID event.
    pub algorithms: Vec<AlgorithmSize>,
    /// Every event after the Spec ID event, in order.
    pub events: Vec<Event>,
    /// The locality of TPM2_Startup if the log records it (initial value of PCR 0).
    pub startup_locality: Option<u8>,
}

impl EventLog {
    /// Parse a whole log.
    pub fn parse(bytes: &[u8]) -> Result<Self, EventLogError> {
        let mut r = Reader::new(bytes);
        let algorithms = parse_spec_id_event(&mut r)?;
        let mut events = Vec::new();
        let mut startup_locality = None;
        while !r.is_empty() {
            let number = events.len().saturating_add(1);
            let event = parse_event2(&mut r, number, &algorithms)?;
            if event.event_type == event_type::EV_NO_ACTION
                && event.pcr_index == 0
                && event.data.len() == 17
                && event.data.starts_with(STARTUP_LOCALITY_SIGNATURE)
            {
                startup_locality = event.data.last().copied();
            }
            events.push(event);
        }
        Ok(Self {
            algorithms,
            events,
            startup_locality,
        })
    }

    /// The events that extend PCR `pcr` (EV_NO_ACTION excluded), in order.
    pub fn events_for(&self, pcr: u32) -> impl Iterator<Item = &Event> {
        self.events
            .iter()
            .filter(move |e| e.pcr_index == pcr && e.event_type != event_type::EV_NO_ACTION)
    }

    /// Replay one bank: every event except EV_NO_ACTION extends its PCR with its digest for
    /// `bank`. Initial values follow the PC Client TPM profile: zero, except PCR 17-22 (DRTM)
    /// all-ones and PCR 0 = the startup locality in its last byte when the log records one.
    pub fn replay(&self, bank: u16) -> Result<Vec<Vec<u8>>, EventLogError> {
        if !self.algorithms.iter().any(|a| a.alg == bank) {
            return Err(EventLogError::Bank { alg: bank });
        }
        match bank {
            alg::SHA1 => self.replay_with::<Sha1>(bank),
            alg::SHA256 => self.replay_with::<Sha256>(bank),
            alg::SHA384 => self.replay_with::<Sha384>(bank),
            alg::SHA512 => self.replay_with::<Sha512>(bank),
            _ => Err(EventLogError::Bank { alg: bank }),
        }
    }

    /// Replay the sha256 bank.
    pub fn replay_sha256(&self) -> Result<[[u8; 32]; PCR_COUNT], EventLogError> {
        let mut out = [[0u8; 32]; PCR_COUNT];
        for (slot, value) in out.iter_mut().zip(self.replay(alg::SHA256)?) {
            slot.copy_from_slice(&value);
        }
        Ok(out)
    }

    /// Replay the sha1 bank.
    pub fn replay_sha1(&self) -> Result<[[u8; 20]; PCR_COUNT], EventLogError> {
        let mut out = [[0u8; 20]; PCR_COUNT];
        for (slot, value) in out.iter_mut().zip(self.replay(alg::SHA1)?) {
            slot.copy_from_slice(&value);
        }
        Ok(out)
    }

    fn replay_with<D: Digest>(&self, bank: u16) -> Result<Vec<Vec<u8>>, EventLogError> {
        let size = <D as Digest>::output_size();
        let mut pcrs: Vec<Vec<u8>> = (0..PCR_COUNT)
            .map(|i| vec![if (17..=22).contains(&i) { 0xff } else { 0 }; size])
            .collect();
        if let (Some(locality), Some(last)) = (
            self.startup_locality,
            pcrs.first_mut().and_then(|p| p.last_mut()),
        ) {
            *last = locality;
        }
        for event in &self.events {
            if event.event_type == event_type::EV_NO_ACTION {
                continue;
            }
            let out_of_range = EventLogError::PcrOutOfRange {
                event: event.number,
                pcr: event.pcr_index,
            };
            let index = usize::try_from(event.pcr_index).map_err(|_| out_of_range.clone())?;
            let pcr = pcrs.get_mut(index).ok_or(out_of_range)?;
            let digest = event.digest(bank).ok_or(EventLogError::MissingDigest {
                event: event.number,
                alg: bank,
            })?;
            let mut hasher = D::new();
            hasher.update(pcr.as_slice());
            hasher.update(digest);
            *pcr = hasher.finalize().to_vec();
        }
        Ok(pcrs)
    }
}

/// The first event: a TCG_PCClientPCREvent (SHA-1 format) holding a TCG_EfiSpecIdEvent.
fn parse_spec_id_event(r: &mut Reader<'_>) -> Result<Vec<AlgorithmSize>, EventLogError> {
    let pcr_index = r.u32_le("TCG_PCClientPCREvent.pcrIndex")?;
    let ty = r.u32_le("TCG_PCClientPCREvent.eventType")?;
    r.take(20, "TCG_PCClientPCREvent.digest")?;
    let size = r.u32_le("TCG_PCClientPCREvent.eventDataSize")?;
    let data = r.take(
        usize::try_from(size).unwrap_or(usize::MAX),
        "TCG_PCClientPCREvent.event",
    )?;
    if pcr_index != 0 || ty != event_type::EV_NO_ACTION || !data.starts_with(SPEC_ID_SIGNATURE) {
        return Err(EventLogError::NotCryptoAgile);
    }
    let mut s = Reader::new(data);
    s.take(16, "TCG_EfiSpecIdEvent.signature")?;
    s.u32_le("TCG_EfiSpecIdEvent.platformClass")?;
    s.take(4, "TCG_EfiSpecIdEvent.specVersion/errata/uintnSize")?;
    let count = s.u32_le("TCG_EfiSpecIdEvent.numberOfAlgorithms")?;
    if count == 0 || count as usize > MAX_ALGORITHMS {
        return Err(EventLogError::AlgorithmCount { count });
    }
    let mut algorithms: Vec<AlgorithmSize> = Vec::new();
    for _ in 0..count {
        let alg = s.u16_le("TCG_EfiSpecIdEventAlgorithmSize.algorithmId")?;
        let digest_size = s.u16_le("TCG_EfiSpecIdEventAlgorithmSize.digestSize")?;
        let known = alg::digest_size(alg);
        if usize::from(digest_size) > MAX_DIGEST_SIZE
            || known.is_some_and(|k| k != usize::from(digest_size))
        {
            return Err(EventLogError::DigestSize {
                alg,
                size: digest_size,
            });
        }
        if algorithms.iter().any(|a| a.alg == alg) {
            return Err(EventLogError::DuplicateAlgorithm {
                alg,
                structure: "TCG_EfiSpecIdEvent",
            });
        }
        algorithms.push(AlgorithmSize { alg, digest_size });
    }
    let vendor_size = s.u8("TCG_EfiSpecIdEvent.vendorInfoSize")?;
    s.take(usize::from(vendor_size), "TCG_EfiSpecIdEvent.vendorInfo")?;
    if !s.is_empty() {
        return Err(EventLogError::TrailingBytes {
            structure: "TCG_EfiSpecIdEvent",
            count: s.remaining(),
        });
    }
    Ok(algorithms)
}

fn parse_event2(
    r: &mut Reader<'_>,
    number: usize,
    algorithms: &[AlgorithmSize],
) -> Result<Event, EventLogError> {
    let pcr_index = r.u32_le("TCG_PCR_EVENT2.pcrIndex")?;
    let event_type = r.u32_le("TCG_PCR_EVENT2.eventType")?;
    let count = r.u32_le("TPML_DIGEST_VALUES.count")?;
    if count as usize > algorithms.len() {
        return Err(EventLogError::DigestCount {
            event: number,
            count,
        });
    }
    let mut digests: Vec<(u16, Vec<u8>)> = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let alg = r.u16_le("TPMT_HA.hashAlg")?;
        let size = algorithms
            .iter()
            .find(|a| a.alg == alg)
            .ok_or(EventLogError::UnknownAlgorithm { event: number, alg })?
            .digest_size;
        if digests.iter().any(|(a, _)| *a == alg) {
            return Err(EventLogError::DuplicateAlgorithm {
                alg,
                structure: "TPML_DIGEST_VALUES",
            });
        }
        let digest = r.take(usize::from(size), "TPMT_HA.digest")?.to_vec();
        digests.push((alg, digest));
    }
    let size = r.u32_le("TCG_PCR_EVENT2.eventSize")?;
    let data = r
        .take(
            usize::try_from(size).unwrap_or(usize::MAX),
            "TCG_PCR_EVENT2.event",
        )?
        .to_vec();
    Ok(Event {
        number,
        pcr_index,
        event_type,
        digests,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal log: Spec ID (sha256 only), then the given (pcr, type, sha256, data) events.
    fn build_log(events: &[(u32, u32, [u8; 32], &[u8])]) -> Vec<u8> {
        let mut spec = SPEC_ID_SIGNATURE.to_vec();
        spec.extend(0u32.to_le_bytes()); // platformClass
        spec.extend([0, 2, 0, 2]); // minor, major, errata, uintnSize
        spec.extend(1u32.to_le_bytes());
        spec.extend(alg::SHA256.to_le_bytes());
        spec.extend(32u16.to_le_bytes());
        spec.push(0); // vendorInfoSize
        let mut log = Vec::new();
        log.extend(0u32.to_le_bytes());
        log.extend(event_type::EV_NO_ACTION.to_le_bytes());
        log.extend([0u8; 20]);
        log.extend((spec.len() as u32).to_le_bytes());
        log.extend(spec);
        for (pcr, ty, digest, data) in events {
            log.extend(pcr.to_le_bytes());
            log.extend(ty.to_le_bytes());
            log.extend(1u32.to_le_bytes());
            log.extend(alg::SHA256.to_le_bytes());
            log.extend(digest);
            log.extend((data.len() as u32).to_le_bytes());
            log.extend(*data);
        }
        log
    }

    #[test]
    fn startup_locality_sets_pcr0_and_drtm_pcrs_start_at_ones() {
        let mut locality = STARTUP_LOCALITY_SIGNATURE.to_vec();
        locality.push(3);
        let log = EventLog::parse(&build_log(&[(
            0,
            event_type::EV_NO_ACTION,
            [0; 32],
            &locality,
        )]))
        .unwrap();
        assert_eq!(log.startup_locality, Some(3));
        let pcrs = log.replay_sha256().unwrap();
        let mut pcr0 = [0u8; 32];
        pcr0[31] = 3;
        assert_eq!(pcrs[0], pcr0);
        assert_eq!(pcrs[17], [0xff; 32]);
        assert_eq!(pcrs[23], [0; 32]);
    }

    #[test]
    fn replay_refuses_bad_pcrs_and_missing_banks() {
        let log = EventLog::parse(&build_log(&[(24, event_type::EV_IPL, [1; 32], b"")])).unwrap();
        assert_eq!(
            log.replay_sha256(),
            Err(EventLogError::PcrOutOfRange { event: 1, pcr: 24 })
        );
        assert_eq!(
            log.replay_sha1(),
            Err(EventLogError::Bank { alg: alg::SHA1 })
        );
    }

    #[test]
    fn a_legacy_log_is_not_crypto_agile() {
        let mut log = build_log(&[]);
        log[4] = 1; // eventType EV_POST_CODE
        assert_eq!(EventLog::parse(&log), Err(EventLogError::NotCryptoAgile));
    }
}
