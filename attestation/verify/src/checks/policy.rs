//! Is the (genuine) report acceptable? Every policy check runs, whatever the others found.

use crate::checks::results::{CheckId, CheckResult, MeasurementMismatch, TcbKind};
use crate::policy::Policy;
use crate::report::Report;
use crate::tcb::{Generation, RawTcb, TcbComponent};

/// Every policy check, in a fixed order, plus the measurement detail when it is not allowed.
pub(crate) fn check_policy(
    report: &Report,
    policy: &Policy,
    generation: Option<Generation>,
) -> (Vec<CheckResult>, Option<MeasurementMismatch>) {
    let f = report.fields();
    let mut checks = Vec::new();

    checks.push(CheckResult::new(
        CheckId::PolicyReportVersion,
        f.version >= policy.min_report_version,
        format!("version >= {}", policy.min_report_version),
        f.version.to_string(),
    ));
    checks.push(CheckResult::new(
        CheckId::PolicyProcessor,
        generation.is_some_and(|g| policy.allowed_processors.contains(&g)),
        format!("one of {}", join(policy.allowed_processors.iter())),
        generation.map_or("unknown".to_owned(), |g| g.to_string()),
    ));
    if let Some(allowed) = &policy.allowed_cpuid {
        let expected = format!(
            "one of {}",
            join(
                allowed
                    .iter()
                    .map(|(fam, model)| format!("{fam:#04x}/{model:#04x}"))
            )
        );
        checks.push(match f.cpuid {
            Some(c) => CheckResult::new(
                CheckId::PolicyCpuid,
                allowed.contains(&(c.family, c.model)),
                expected,
                format!("{:#04x}/{:#04x}", c.family, c.model),
            ),
            None => CheckResult::new(
                CheckId::PolicyCpuid,
                false,
                expected,
                format!("none: a version {} report carries no CPUID", f.version),
            ),
        });
    }

    let measurement_ok = policy.any_measurement_with_pinned_id_key
        || policy.allowed_measurements.contains(&f.measurement);
    checks.push(CheckResult::new(
        CheckId::PolicyMeasurement,
        measurement_ok,
        match policy.allowed_measurements.as_slice() {
            _ if policy.any_measurement_with_pinned_id_key => {
                "any (any_measurement_with_pinned_id_key: the ID key digest is pinned instead)"
                    .to_owned()
            }
            [one] => hex::encode(one),
            many => format!("one of {} allowed measurements", many.len()),
        },
        hex::encode(f.measurement),
    ));
    let mismatch = (!measurement_ok).then(|| MeasurementMismatch {
        got: f.measurement,
        allowed: policy.allowed_measurements.clone(),
    });

    for (kind, raw) in [
        (TcbKind::Reported, f.reported_tcb),
        (TcbKind::Committed, f.committed_tcb),
    ] {
        tcb_checks(&mut checks, policy, generation, kind, raw);
    }

    checks.push(flag_check(
        CheckId::PolicyDebug,
        policy.allow_debug,
        f.policy.debug(),
        "POLICY.DEBUG",
    ));
    checks.push(flag_check(
        CheckId::PolicyMigrationAgent,
        policy.allow_migration_agent,
        f.policy.migrate_ma(),
        "POLICY.MIGRATE_MA",
    ));
    checks.push(flag_check(
        CheckId::PolicySmt,
        policy.allow_smt,
        f.platform_info.smt_enabled(),
        "PLATFORM_INFO.SMT_EN",
    ));
    checks.push(CheckResult::new(
        CheckId::PolicyVmpl,
        policy.allowed_vmpl.contains(&f.vmpl),
        format!("one of {}", join(policy.allowed_vmpl.iter())),
        f.vmpl.to_string(),
    ));

    if let Some(allowed) = &policy.allowed_chip_ids {
        let masked = f.chip_id.iter().all(|&b| b == 0);
        checks.push(CheckResult::new(
            CheckId::PolicyChipId,
            !masked && allowed.contains(&f.chip_id),
            format!("one of {} allowed chip IDs", allowed.len()),
            if masked {
                "masked (all zero)".to_owned()
            } else {
                hex::encode(f.chip_id)
            },
        ));
    }
    if let Some(expected) = &policy.host_data {
        checks.push(equal_check(CheckId::PolicyHostData, expected, &f.host_data));
    }
    if let Some(expected) = &policy.report_data {
        checks.push(equal_check(
            CheckId::PolicyReportData,
            expected,
            &f.report_data,
        ));
    }
    if let Some(allowed) = &policy.allowed_id_key_digests {
        checks.push(CheckResult::new(
            CheckId::PolicyIdKeyDigest,
            allowed.contains(&f.id_key_digest),
            format!("one of {} allowed ID key digests", allowed.len()),
            hex::encode(f.id_key_digest),
        ));
    }
    if let Some(allowed) = &policy.allowed_author_key_digests {
        let present = f.key_info.author_key_en();
        checks.push(CheckResult::new(
            CheckId::PolicyAuthorKeyDigest,
            present && allowed.contains(&f.author_key_digest),
            format!("an author key, one of {} allowed digests", allowed.len()),
            if present {
                hex::encode(f.author_key_digest)
            } else {
                "no author key (KEY_INFO.AUTHOR_KEY_EN clear)".to_owned()
            },
        ));
    }
    if let Some(min) = policy.min_guest_svn {
        checks.push(CheckResult::new(
            CheckId::PolicyGuestSvn,
            f.guest_svn >= min,
            format!(">= {min}"),
            f.guest_svn.to_string(),
        ));
    }
    (checks, mismatch)
}

/// One check per component of one TCB; a single failing check when no floor applies.
fn tcb_checks(
    checks: &mut Vec<CheckResult>,
    policy: &Policy,
    generation: Option<Generation>,
    kind: TcbKind,
    raw: RawTcb,
) {
    let Some(g) = generation else {
        checks.push(CheckResult::new(
            CheckId::PolicyTcb(kind, None),
            false,
            "a TCB floor for the processor generation",
            format!("{raw}: generation unknown, so is the TCB layout"),
        ));
        return;
    };
    let Some(floors) = policy.min_tcb.get(&g) else {
        checks.push(CheckResult::new(
            CheckId::PolicyTcb(kind, None),
            false,
            format!("a TCB floor for {g}"),
            format!("the policy has none for {g}"),
        ));
        return;
    };
    let floor = match kind {
        TcbKind::Reported => floors.reported,
        TcbKind::Committed => floors.committed,
    };
    let tcb = raw.decode(g);
    for component in TcbComponent::ALL {
        let (Some(got), want) = (tcb.get(component), floor.get(component)) else {
            continue; // no FMC before Turin
        };
        // A Turin floor always has fmc (validated on load); a missing one in a hand-built
        // policy must not let anything through.
        let (passed, expected) = match want {
            Some(want) => (got >= want, format!(">= {want}")),
            None => (false, "a floor (the policy has none)".to_owned()),
        };
        checks.push(CheckResult::new(
            CheckId::PolicyTcb(kind, Some(component)),
            passed,
            expected,
            got.to_string(),
        ));
    }
}

fn flag_check(id: CheckId, allowed: bool, set: bool, field: &str) -> CheckResult {
    CheckResult::new(
        id,
        allowed || !set,
        if allowed {
            format!("{field} 0 or 1 (allowed by the policy)")
        } else {
            format!("{field} 0")
        },
        format!("{field} {}", u8::from(set)),
    )
}

fn equal_check(id: CheckId, expected: &[u8], got: &[u8]) -> CheckResult {
    CheckResult::new(id, expected == got, hex::encode(expected), hex::encode(got))
}

fn join<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> String {
    let v: Vec<String> = items.map(|i| i.to_string()).collect();
    format!("[{}]", v.join(", "))
}
