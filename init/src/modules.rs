//! Loading the image's kernel modules.
//!
//! The image builder resolved the dependency closure at build time and wrote the modules in load
//! order, so the init needs no `modules.dep` and no module tooling: it hands each file to
//! `finit_module(2)` in turn.

use std::ffi::CString;
use std::fs::File;
use std::time::Instant;

use nix::errno::Errno;
use nix::kmod::{finit_module, ModuleInitFlags};
use tracing::info;

use crate::InitError;

pub(crate) fn load_all(paths: &[String]) -> Result<(), InitError> {
    let started = Instant::now();
    for path in paths {
        load_one(path)?;
    }
    info!(
        count = paths.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "kernel modules loaded"
    );
    Ok(())
}

fn load_one(path: &str) -> Result<(), InitError> {
    let file = File::open(path).map_err(|source| InitError::ModuleOpen {
        path: path.to_owned(),
        source,
    })?;
    let no_params = CString::default();
    match finit_module(&file, &no_params, ModuleInitFlags::empty()) {
        // EEXIST: built in or already loaded; either way the driver is there.
        Ok(()) | Err(Errno::EEXIST) => Ok(()),
        // ENODEV: a driver for hardware this VM does not have (sev-guest outside SNP). Not an
        // error here; a service that needs the device fails on its own with a precise message.
        Err(Errno::ENODEV) => {
            info!(module = %path, "module found no device; continuing");
            Ok(())
        }
        Err(errno) => Err(InitError::ModuleLoad {
            path: path.to_owned(),
            errno,
        }),
    }
}
