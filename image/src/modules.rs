//! Kernel module dependency closure.
//!
//! Dependencies come from each module's own `.modinfo` section (`depends=a,b`), which is what
//! `depmod` reads to write `modules.dep`: the vendored modules carry the truth themselves, so the
//! builder needs neither depmod nor the package's full module tree. The result lists every module
//! after all of its dependencies, in a deterministic order (spec order, depth first).

use std::collections::{BTreeMap, BTreeSet};

use object::{Object, ObjectSection};

use crate::lock::{verify_input, ModulePin, VerifiedInput};
use crate::ImageError;

/// Module names are compared with `-` and `_` equal, as the kernel does.
pub fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

/// Reads the `depends=` list from a module's `.modinfo` section.
pub fn depends(path: &str, bytes: &[u8]) -> Result<Vec<String>, ImageError> {
    let bad = |reason: String| ImageError::Modinfo {
        path: path.to_owned(),
        reason,
    };
    let file = object::File::parse(bytes).map_err(|e| bad(e.to_string()))?;
    let section = file
        .section_by_name(".modinfo")
        .ok_or_else(|| bad("no .modinfo section".into()))?;
    let data = section.data().map_err(|e| bad(e.to_string()))?;
    Ok(data
        .split(|b| *b == 0)
        .filter_map(|entry| entry.strip_prefix(b"depends="))
        .flat_map(|list| list.split(|b| *b == b','))
        .filter(|name| !name.is_empty())
        .map(|name| canonical(&String::from_utf8_lossy(name)))
        .collect())
}

/// Resolves `wanted` to the pinned modules they need, dependencies first, each verified against
/// its sha256.
pub fn closure(
    root: &std::path::Path,
    pins: &[ModulePin],
    wanted: &[String],
    hint: &str,
) -> Result<Vec<VerifiedInput>, ImageError> {
    let by_name: BTreeMap<String, &ModulePin> =
        pins.iter().map(|p| (canonical(&p.name), p)).collect();
    let mut resolver = Resolver {
        root,
        by_name,
        hint,
        done: BTreeSet::new(),
        visiting: Vec::new(),
        order: Vec::new(),
    };
    for name in wanted {
        resolver.visit(&canonical(name), "the image spec")?;
    }
    Ok(resolver.order)
}

struct Resolver<'a> {
    root: &'a std::path::Path,
    by_name: BTreeMap<String, &'a ModulePin>,
    hint: &'a str,
    done: BTreeSet<String>,
    visiting: Vec<String>,
    order: Vec<VerifiedInput>,
}

impl Resolver<'_> {
    fn visit(&mut self, name: &str, wanted_by: &str) -> Result<(), ImageError> {
        if self.done.contains(name) {
            return Ok(());
        }
        if self.visiting.iter().any(|n| n == name) {
            return Err(ImageError::ModuleCycle(name.to_owned()));
        }
        let pin = *self
            .by_name
            .get(name)
            .ok_or_else(|| ImageError::ModuleNotPinned {
                name: name.to_owned(),
                wanted_by: wanted_by.to_owned(),
            })?;
        let input = verify_input(
            self.root,
            &format!("module:{}", pin.name),
            &pin.path,
            &pin.sha256,
            self.hint,
        )?;
        self.visiting.push(name.to_owned());
        for dependency in depends(&pin.path, &input.bytes)? {
            self.visit(&dependency, &format!("module {}", pin.name))?;
        }
        self.visiting.pop();
        self.done.insert(name.to_owned());
        self.order.push(input);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::InputsLock;
    use std::path::Path;

    fn checkout() -> &'static Path {
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
    }

    #[test]
    fn dependencies_come_before_their_users() {
        let lock = InputsLock::load(&checkout().join("image/inputs.lock")).unwrap();
        let order = closure(checkout(), &lock.modules, &["virtio_net".into()], "").unwrap();
        let names: Vec<_> = order.iter().map(|m| m.what.as_str()).collect();
        let pos = |n: &str| names.iter().position(|x| *x == n).unwrap();
        assert!(pos("module:virtio") < pos("module:virtio_net"), "{names:?}");
        assert!(
            pos("module:failover") < pos("module:net_failover"),
            "{names:?}"
        );
        assert!(
            pos("module:net_failover") < pos("module:virtio_net"),
            "{names:?}"
        );
    }

    #[test]
    fn a_module_missing_from_the_lock_names_who_wanted_it() {
        let lock = InputsLock::load(&checkout().join("image/inputs.lock")).unwrap();
        let pins: Vec<_> = lock
            .modules
            .iter()
            .filter(|m| m.name != "failover")
            .cloned()
            .collect();
        let err = closure(checkout(), &pins, &["virtio_net".into()], "")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "kernel module 'failover' (wanted by module net_failover) is not pinned in the lock file"
        );
    }

    #[test]
    fn garbage_is_not_a_module() {
        let err = depends("x.ko", b"not an elf file").unwrap_err().to_string();
        assert!(
            err.starts_with("kernel module x.ko: cannot read its .modinfo"),
            "{err}"
        );
    }
}
