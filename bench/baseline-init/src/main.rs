//! The boot benchmark's baseline: the least an init can do. It prints a marker on the console
//! (its stdout) and idles. `boot-bench` boots it with the same kernel and QEMU flags as our
//! images and compares the time to this marker with our time to a healthy appliance.

#![forbid(unsafe_code)]

use std::time::Duration;

fn main() {
    println!("baseline-init: ready");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
