//! The committed pins (`measurements/pins/<role>.json`) are what this checkout builds.
//!
//! When a change moves a launch measurement, this test fails and says how to re-pin; the new pins
//! then go through review with the change.

use coffer_image::pins;
use coffer_tests::{build_image, checkout, measure_args, run};
use coffer_types::{MeasurementSet, Role, MEASUREMENTS_FILE};

#[test]
fn every_image_reproduces_its_committed_pins() {
    let mut failures = Vec::new();
    for role in Role::ALL {
        let out = tempfile::tempdir().unwrap();
        build_image(role, out.path(), None);
        let built: MeasurementSet =
            serde_json::from_slice(&std::fs::read(out.path().join(MEASUREMENTS_FILE)).unwrap())
                .unwrap();
        let path = pins::pin_path(&checkout(), role);
        let pinned = pins::load(&path).unwrap().expect("a pin file per role");
        if let Err(why) = pins::check_reproduces(&pinned, &built) {
            failures.push(format!("{role}: {why}"));
        }
    }
    assert!(
        failures.is_empty(),
        "the build no longer reproduces the committed pins:\n  {}\nIf the change is intended, re-pin with `make pin` and commit measurements/pins/.",
        failures.join("\n  ")
    );
}

#[test]
fn the_measurement_set_agrees_with_coffer_measure() {
    let out = tempfile::tempdir().unwrap();
    build_image(Role::Client, out.path(), None);
    let set: MeasurementSet =
        serde_json::from_slice(&std::fs::read(out.path().join(MEASUREMENTS_FILE)).unwrap())
            .unwrap();
    for entry in [&set.snp[0], set.snp.last().unwrap()] {
        let args = measure_args(
            out.path(),
            entry.vcpus,
            &entry.vcpu_type,
            &entry.guest_features,
        );
        let mut ours = vec!["measure", "snp"];
        ours.extend(args.iter().map(String::as_str));
        let outcome = run(&ours);
        assert_eq!(outcome.code, 0, "{outcome:?}");
        assert_eq!(outcome.stdout.trim(), entry.launch_digest, "{entry:?}");
    }
}
