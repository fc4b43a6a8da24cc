//! Is the report what the VEK says it is? Report sanity, the report signature, and the VEK's
//! chip ID and TCB extensions against the report.

use p384::ecdsa::signature::Verifier;
use p384::ecdsa::Signature;

use crate::certs::Certificate;
use crate::chain::VekKind;
use crate::checks::results::{CheckId, CheckResult};
use crate::report::{Report, SigningKey, SIGNATURE_ALGO_ECDSA_P384_SHA384};
use crate::tcb::Generation;

/// Every check of the report against the VEK. `kind` and `generation` come from the chain
/// (`None` when the VEK's issuer is unknown; the checks that need them then fail).
pub(crate) fn check_report(
    report: &Report,
    vek: &Certificate,
    kind: Option<VekKind>,
    generation: Option<Generation>,
) -> Vec<CheckResult> {
    let f = report.fields();
    let mut checks = Vec::new();

    checks.push(CheckResult::new(
        CheckId::ReportSignatureAlgo,
        f.signature_algo == SIGNATURE_ALGO_ECDSA_P384_SHA384,
        "1 (ECDSA P-384 with SHA-384)",
        f.signature_algo.to_string(),
    ));
    checks.push(CheckResult::new(
        CheckId::ReportMaskChipKey,
        !f.key_info.mask_chip_key(),
        "0 (report signed)",
        if f.key_info.mask_chip_key() {
            "1 (the report is not signed)"
        } else {
            "0"
        },
    ));
    let signing_key = f.key_info.signing_key();
    checks.push(match kind {
        Some(kind) => {
            let matches = matches!(
                (kind, signing_key),
                (VekKind::Vcek, SigningKey::Vcek) | (VekKind::Vlek, SigningKey::Vlek)
            );
            CheckResult::new(
                CheckId::ReportSigningKey,
                matches,
                format!("{kind} (the certificate given is a {kind})"),
                signing_key.to_string(),
            )
        }
        None => CheckResult::new(
            CheckId::ReportSigningKey,
            false,
            "the kind of key the certificate is (VCEK or VLEK)",
            format!("{signing_key}, but the certificate's kind is unknown"),
        ),
    });
    let reserved = report.nonzero_reserved();
    checks.push(CheckResult::new(
        CheckId::ReportReserved,
        reserved.is_empty(),
        "reserved fields zero, POLICY bit 17 one",
        if reserved.is_empty() {
            "as required".to_owned()
        } else {
            reserved
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        },
    ));
    checks.push(signature_check(report, vek));

    if let Some(cpuid) = f.cpuid {
        let from_cpuid = crate::tcb::Generation::from_cpuid(cpuid.family, cpuid.model);
        checks.push(CheckResult::new(
            CheckId::ReportProcessor,
            from_cpuid.is_some() && from_cpuid == generation,
            match generation {
                Some(g) => format!("a {g} processor (from the VEK's issuer)"),
                None => "a processor of the VEK's generation (unknown)".to_owned(),
            },
            match from_cpuid {
                Some(g) => format!("{cpuid}: {g}"),
                None => format!("{cpuid}: not a known SEV-SNP processor"),
            },
        ));
    }

    let extensions = vek.vek_extensions();
    if kind == Some(VekKind::Vcek) {
        checks.push(chip_id_check(&f.chip_id, extensions.as_ref()));
    }
    let expected_tcb = match &extensions {
        Ok(ext) => format!("the VEK's SPLs: {}", ext.tcb),
        Err(e) => format!("the VEK's SPLs ({e})"),
    };
    checks.push(match (generation, &extensions) {
        (Some(g), Ok(ext)) => {
            let got = f.reported_tcb.decode(g);
            // The VEK of a pre-Turin part has no fmcSPL; a Turin VEK must have one.
            CheckResult::new(
                CheckId::VekReportedTcb,
                got == ext.tcb,
                expected_tcb,
                format!("REPORTED_TCB {} ({} layout): {got}", f.reported_tcb, g),
            )
        }
        (None, _) => CheckResult::new(
            CheckId::VekReportedTcb,
            false,
            expected_tcb,
            format!(
                "REPORTED_TCB {}: layout unknown (generation unknown)",
                f.reported_tcb
            ),
        ),
        (Some(_), Err(e)) => CheckResult::new(
            CheckId::VekReportedTcb,
            false,
            expected_tcb,
            format!("REPORTED_TCB {}; cannot compare: {e}", f.reported_tcb),
        ),
    });
    checks
}

fn signature_check(report: &Report, vek: &Certificate) -> CheckResult {
    let expected = "ECDSA P-384 signature over bytes 0x000..0x2A0 by the VEK";
    let outcome = vek.p384_public_key().and_then(|key| {
        let sig = p384_signature(&report.signature_r(), &report.signature_s())?;
        key.verify(report.signed_bytes(), &sig)
            .map_err(|_| "does not verify with the VEK's key".to_owned())
    });
    match outcome {
        Ok(()) => CheckResult::new(CheckId::ReportSignature, true, expected, "verified"),
        Err(why) => CheckResult::new(CheckId::ReportSignature, false, expected, why),
    }
}

/// R and S are 72-byte little-endian numbers; a P-384 scalar fits in the low 48 bytes.
fn p384_signature(r: &[u8; 72], s: &[u8; 72]) -> Result<Signature, String> {
    let mut be = [0u8; 96];
    for (out, half, name) in [(0usize, r, "R"), (48, s, "S")] {
        let (low, high) = half.split_at(48);
        if high.iter().any(|&b| b != 0) {
            return Err(format!("signature {name} is longer than 48 bytes"));
        }
        for (i, b) in low.iter().rev().enumerate() {
            be[out + i] = *b;
        }
    }
    Signature::from_slice(&be)
        .map_err(|_| "signature R or S is zero or not below the curve order".into())
}

fn chip_id_check(
    chip_id: &[u8; 64],
    extensions: Result<&crate::certs::VekExtensions, &crate::error::ExtensionError>,
) -> CheckResult {
    let got = format!("CHIP_ID {}", hex::encode(chip_id));
    let hw_id = match extensions {
        Err(e) => {
            return CheckResult::new(
                CheckId::VekChipId,
                false,
                format!("the VCEK's hwID ({e})"),
                got,
            )
        }
        Ok(ext) => ext.hw_id.as_deref(),
    };
    let Some(hw_id) = hw_id else {
        return CheckResult::new(
            CheckId::VekChipId,
            false,
            "the VCEK's hwID (absent from the certificate)",
            got,
        );
    };
    // Turin VCEKs carry an 8-byte hwID; the rest of CHIP_ID is then zero.
    let (head, tail) = chip_id.split_at(hw_id.len().min(64));
    let matches = head == hw_id && tail.iter().all(|&b| b == 0) && chip_id.iter().any(|&b| b != 0);
    let got = if chip_id.iter().all(|&b| b == 0) {
        format!("{got} (masked)")
    } else {
        got
    };
    CheckResult::new(
        CheckId::VekChipId,
        matches,
        format!("the VCEK's hwID {}", hex::encode(hw_id)),
        got,
    )
}
