//! `coffer measure snp` on our own images agrees with the reference `sev-snp-measure`.
//!
//! The measurement crate's own tests cross-check synthetic inputs; this one uses the real
//! artifacts of a built image: the vendored AmdSev OVMF, the Debian kernel, our initramfs and
//! command line. The reference must be on PATH (`make test` puts it there).

use std::process::Command;

use coffer_tests::{build_image, measure_args, run};
use coffer_types::Role;

#[test]
fn our_kms_image_measures_the_same_as_with_the_reference_tool() {
    let out = tempfile::tempdir().unwrap();
    build_image(Role::Kms, out.path(), None);
    for (vcpus, vcpu_type, features) in [(1, "EPYC-v4", "0x1"), (4, "EPYC-Milan", "0x21")] {
        let args = measure_args(out.path(), vcpus, vcpu_type, features);
        let reference = Command::new("sev-snp-measure")
            .args(&args)
            .output()
            .expect("sev-snp-measure on PATH (pip install sev-snp-measure==0.0.13)");
        assert!(reference.status.success(), "{reference:?}");
        let mut ours_args = vec!["measure", "snp"];
        ours_args.extend(args.iter().map(String::as_str));
        let ours = run(&ours_args);
        assert_eq!(ours.code, 0, "{ours:?}");
        assert_eq!(
            ours.stdout,
            String::from_utf8_lossy(&reference.stdout),
            "vcpus {vcpus}, {vcpu_type}, features {features}"
        );
        assert_eq!(ours.stdout.trim().len(), 96, "{ours:?}");
    }
}
