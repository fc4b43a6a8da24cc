//! OVMF footer table and SEV metadata parsing, then a full launch measurement, on arbitrary
//! firmware bytes: errors are fine, panics are bugs.
#![no_main]

use coffer_measurements::snp::{CpuSignature, Ovmf, SnpLaunch, Vmm};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Ovmf::parse(data);
    if let Ok(signature) = CpuSignature::from_vcpu_type("EPYC-v4") {
        let _ = SnpLaunch::new(data, 2, Vmm::Qemu(signature))
            .direct_boot(b"kernel", Some(b"initrd"), Some("console=ttyS0"))
            .measure();
    }
});
