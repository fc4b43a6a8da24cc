//! The pseudo file systems every appliance needs.

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sys::stat::Mode;
use tracing::info;

use crate::InitError;

struct PseudoFs {
    fstype: &'static str,
    target: &'static str,
    flags: MsFlags,
    data: &'static str,
}

/// Mounted before anything else, in this order (`/dev/pts` needs `/dev`).
const EARLY: &[PseudoFs] = &[
    PseudoFs {
        fstype: "proc",
        target: "/proc",
        flags: MsFlags::MS_NOSUID
            .union(MsFlags::MS_NODEV)
            .union(MsFlags::MS_NOEXEC),
        data: "",
    },
    PseudoFs {
        fstype: "sysfs",
        target: "/sys",
        flags: MsFlags::MS_NOSUID
            .union(MsFlags::MS_NODEV)
            .union(MsFlags::MS_NOEXEC),
        data: "",
    },
    PseudoFs {
        fstype: "devtmpfs",
        target: "/dev",
        flags: MsFlags::MS_NOSUID,
        data: "mode=0755",
    },
    PseudoFs {
        fstype: "devpts",
        target: "/dev/pts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: "mode=0620,ptmxmode=0666",
    },
    PseudoFs {
        fstype: "tmpfs",
        target: "/run",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=0755",
    },
    PseudoFs {
        fstype: "tmpfs",
        target: "/tmp",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=1777",
    },
];

/// configfs is a module in Debian's kernel, so it is mounted after the modules are loaded.
const CONFIGFS: PseudoFs = PseudoFs {
    fstype: "configfs",
    target: "/sys/kernel/config",
    flags: MsFlags::MS_NOSUID
        .union(MsFlags::MS_NODEV)
        .union(MsFlags::MS_NOEXEC),
    data: "",
};

pub(crate) fn mount_early() -> Result<(), InitError> {
    EARLY.iter().try_for_each(mount_one)
}

pub(crate) fn mount_configfs() -> Result<(), InitError> {
    mount_one(&CONFIGFS)
}

fn mount_one(fs: &PseudoFs) -> Result<(), InitError> {
    // Mount points below another mount (like /dev/pts) do not exist in the initramfs.
    match nix::unistd::mkdir(fs.target, Mode::from_bits_truncate(0o755)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(errno) => {
            return Err(InitError::Mount {
                fstype: fs.fstype,
                target: fs.target,
                errno,
            })
        }
    }
    let data = (!fs.data.is_empty()).then_some(fs.data);
    match mount(Some(fs.fstype), fs.target, Some(fs.fstype), fs.flags, data) {
        Ok(()) => {
            info!(fstype = fs.fstype, target = fs.target, "mounted");
            Ok(())
        }
        // Already mounted (a kernel with DEVTMPFS_MOUNT, or a second call): nothing to do.
        Err(Errno::EBUSY) => Ok(()),
        Err(errno) => Err(InitError::Mount {
            fstype: fs.fstype,
            target: fs.target,
            errno,
        }),
    }
}
