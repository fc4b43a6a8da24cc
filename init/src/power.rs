//! Power: the ACPI power button, Ctrl-Alt-Del, and powering off.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;

use coffer_types::Role;
use nix::sys::reboot::{reboot, set_cad_enabled, RebootMode};
use tracing::{info, warn};

/// Size of `struct input_event` on x86_64: `timeval` (16) + type (2) + code (2) + value (4).
pub(crate) const INPUT_EVENT_SIZE: usize = 24;
const EV_KEY: u16 = 0x01;
const KEY_POWER: u16 = 116;

pub(crate) fn set_hostname(role: Role) {
    if let Err(errno) = nix::unistd::sethostname(format!("coffer-{role}")) {
        warn!(%errno, "cannot set hostname");
    }
}

/// Opens the evdev nodes of every ACPI power button (QEMU's `system_powerdown`, a cloud's
/// "stop"). Needs the `button` and `evdev` modules. Ctrl-Alt-Del is turned into SIGINT as well.
pub(crate) fn open_power_buttons() -> Vec<File> {
    if let Err(errno) = set_cad_enabled(false) {
        warn!(%errno, "cannot route Ctrl-Alt-Del to the init");
    }
    let mut buttons = Vec::new();
    let Ok(entries) = std::fs::read_dir("/sys/class/input") else {
        warn!("no /sys/class/input: the power button will not be seen");
        return buttons;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("event") {
            continue;
        }
        let device = std::fs::read_to_string(entry.path().join("device/name")).unwrap_or_default();
        if device.trim() != "Power Button" {
            continue;
        }
        match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
            .open(format!("/dev/input/{name}"))
        {
            Ok(file) => {
                info!(device = %name, "watching the power button");
                buttons.push(file);
            }
            Err(e) => warn!(device = %name, error = %e, "cannot open power button"),
        }
    }
    if buttons.is_empty() {
        warn!("no power button found: only SIGTERM and Ctrl-Alt-Del will shut down");
    }
    buttons
}

/// True if a buffer of input events holds a power-button press.
pub(crate) fn has_power_press(events: &[u8]) -> bool {
    events.chunks_exact(INPUT_EVENT_SIZE).any(|event| {
        let kind = u16::from_ne_bytes([event[16], event[17]]);
        let code = u16::from_ne_bytes([event[18], event[19]]);
        let value = i32::from_ne_bytes([event[20], event[21], event[22], event[23]]);
        kind == EV_KEY && code == KEY_POWER && value == 1
    })
}

/// Flushes file systems and powers the VM off. If the kernel refuses, there is nothing better to
/// do than to wait: exiting PID 1 would panic the kernel.
pub(crate) fn power_off() -> ! {
    nix::unistd::sync();
    let err = reboot(RebootMode::RB_POWER_OFF);
    warn!(error = ?err, "power-off failed; halting in place");
    loop {
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: u16, code: u16, value: i32) -> Vec<u8> {
        let mut bytes = vec![0u8; 16];
        bytes.extend_from_slice(&kind.to_ne_bytes());
        bytes.extend_from_slice(&code.to_ne_bytes());
        bytes.extend_from_slice(&value.to_ne_bytes());
        bytes
    }

    #[test]
    fn a_power_key_press_is_seen_among_other_events() {
        let mut events = event(0, 0, 0); // EV_SYN
        events.extend(event(EV_KEY, KEY_POWER, 1));
        assert!(has_power_press(&events));
    }

    #[test]
    fn a_release_or_another_key_is_not_a_press() {
        assert!(!has_power_press(&event(EV_KEY, KEY_POWER, 0)));
        assert!(!has_power_press(&event(EV_KEY, 30, 1)));
        assert!(!has_power_press(&event(EV_KEY, KEY_POWER, 1)[..23]));
    }
}
