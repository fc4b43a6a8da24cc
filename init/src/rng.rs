//! Waiting for the kernel RNG.
//!
//! Seeding: the kernel seeds its CRNG from the CPU's RDSEED/RDRAND, which the image's command line
//! tells it to trust (`random.trust_cpu=on`; on SEV-SNP the CPU is inside the trust boundary), and
//! from jitter entropy. The host's virtio-rng is deliberately not used: in a confidential VM the
//! host is the adversary, and entropy it supplies must not be credited.
//!
//! Waiting: since Linux 5.6 `/dev/random` blocks exactly until the CRNG is initialised and never
//! afterwards, so one blocking read is the wait. No service starts before it returns, so no key is
//! ever generated from an unseeded pool.

use std::io::Read;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::InitError;

pub(crate) fn wait_until_seeded() -> Result<(), InitError> {
    let started = Instant::now();
    let (done, result) = mpsc::channel();
    std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        let read = std::fs::File::open("/dev/random").and_then(|mut f| f.read_exact(&mut byte));
        let _ = done.send(read);
    });
    loop {
        match result.recv_timeout(Duration::from_secs(5)) {
            Ok(read) => read.map_err(InitError::Rng)?,
            // Say so on the console while we wait: a VM stuck here is otherwise silent.
            Err(RecvTimeoutError::Timeout) => {
                warn!(
                    waited_s = started.elapsed().as_secs(),
                    "still waiting for the kernel RNG"
                );
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(InitError::Rng(std::io::Error::other(
                    "RNG waiter thread died",
                )))
            }
        }
        info!(
            waited_ms = started.elapsed().as_millis() as u64,
            "kernel RNG seeded"
        );
        return Ok(());
    }
}
