//! A deterministic `newc` cpio writer for the initramfs.
//!
//! Written by hand, on purpose: reproducibility depends on every header field (inode numbers,
//! mtime, owner, link counts, device numbers) and the format is a 110-byte ASCII header plus
//! padding (see the kernel's `Documentation/driver-api/early-userspace/buffer-format.rst`).
//! Entries are sorted by path, owned by root, stamped with mtime 0 and numbered from 1, so the
//! same inputs always give the same bytes.

use std::collections::BTreeMap;
use std::io::{self, Write};

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A directory with these permission bits.
    Dir(u32),
    /// A regular file with these permission bits and contents.
    File(u32, Vec<u8>),
    /// A symbolic link to this target.
    Symlink(String),
    /// A character device (permission bits, major, minor).
    CharDevice(u32, u32, u32),
}

/// An archive being assembled. Paths are relative (`bin/init`), without a leading `/`.
#[derive(Debug, Default)]
pub struct Archive {
    entries: BTreeMap<String, Node>,
}

impl Archive {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `node` at `path`, and every missing parent directory (mode 0755).
    pub fn add(&mut self, path: &str, node: Node) {
        let path = path.trim_start_matches('/');
        let mut parent = String::new();
        for component in path
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map(|x| x.1)
            .unwrap_or(&[])
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(component);
            self.entries
                .entry(parent.clone())
                .or_insert(Node::Dir(0o755));
        }
        self.entries.insert(path.to_owned(), node);
    }

    /// Writes the archive in `newc` format, entries in path order, then the trailer.
    pub fn write_to(&self, out: &mut impl Write) -> io::Result<()> {
        let mut written = 0usize;
        for (index, (path, node)) in self.entries.iter().enumerate() {
            let (mode, nlink, data, rdev): (u32, u32, &[u8], (u32, u32)) = match node {
                Node::Dir(perm) => (0o040000 | perm, 2, &[], (0, 0)),
                Node::File(perm, bytes) => (0o100000 | perm, 1, bytes, (0, 0)),
                Node::Symlink(target) => (0o120777, 1, target.as_bytes(), (0, 0)),
                Node::CharDevice(perm, major, minor) => (0o020000 | perm, 1, &[], (*major, *minor)),
            };
            written += write_entry(out, index as u32 + 1, mode, nlink, rdev, path, data)?;
        }
        written += write_entry(out, 0, 0, 1, (0, 0), "TRAILER!!!", &[])?;
        // Pad the archive to a 512-byte multiple, as GNU cpio does.
        let pad = (512 - written % 512) % 512;
        out.write_all(&vec![0u8; pad])
    }
}

fn write_entry(
    out: &mut impl Write,
    ino: u32,
    mode: u32,
    nlink: u32,
    rdev: (u32, u32),
    name: &str,
    data: &[u8],
) -> io::Result<usize> {
    let namesize = name.len() + 1;
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        u32::try_from(data.len()).map_err(|_| io::Error::other("file over 4 GiB"))?,
        0, // devmajor
        0, // devminor
        rdev.0,
        rdev.1,
        namesize as u32,
        0, // check
    ];
    let mut header = String::with_capacity(110);
    header.push_str("070701");
    for field in fields {
        header.push_str(&format!("{field:08X}"));
    }
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    let head_len = 110 + namesize;
    let head_pad = (4 - head_len % 4) % 4;
    out.write_all(&[0u8; 3][..head_pad])?;
    out.write_all(data)?;
    let data_pad = (4 - data.len() % 4) % 4;
    out.write_all(&[0u8; 3][..data_pad])?;
    Ok(head_len + head_pad + data.len() + data_pad)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, mode, rdev, data) of one entry.
    type Entry = (String, u32, (u32, u32), Vec<u8>);

    /// A minimal reader for the tests.
    fn read(mut bytes: &[u8]) -> Vec<Entry> {
        let mut out = Vec::new();
        loop {
            let header = std::str::from_utf8(&bytes[..110]).unwrap();
            assert_eq!(&header[..6], "070701");
            let field = |i: usize| u32::from_str_radix(&header[6 + 8 * i..14 + 8 * i], 16).unwrap();
            let (mode, size, rdev, namesize) = (
                field(1),
                field(6) as usize,
                (field(9), field(10)),
                field(11) as usize,
            );
            let name = std::str::from_utf8(&bytes[110..110 + namesize - 1])
                .unwrap()
                .to_owned();
            let data_start = (110 + namesize).div_ceil(4) * 4;
            let data = bytes[data_start..data_start + size].to_vec();
            bytes = &bytes[(data_start + size).div_ceil(4) * 4..];
            if name == "TRAILER!!!" {
                return out;
            }
            out.push((name, mode, rdev, data));
        }
    }

    #[test]
    fn entries_come_out_sorted_with_their_parents() {
        let mut archive = Archive::new();
        archive.add("/lib/modules/x.ko", Node::File(0o444, b"ko".to_vec()));
        archive.add("init", Node::Symlink("bin/app".into()));
        archive.add("dev/console", Node::CharDevice(0o600, 5, 1));
        let mut bytes = Vec::new();
        archive.write_to(&mut bytes).unwrap();
        assert_eq!(bytes.len() % 512, 0);
        let entries = read(&bytes);
        let names: Vec<_> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "init",
                "lib",
                "lib/modules",
                "lib/modules/x.ko"
            ]
        );
        assert_eq!(entries[1].1, 0o020600);
        assert_eq!(entries[1].2, (5, 1));
        assert_eq!(entries[2].3, b"bin/app");
        assert_eq!(entries[5].3, b"ko");
    }

    #[test]
    fn insertion_order_does_not_change_the_bytes() {
        let build = |order: &[&str]| {
            let mut archive = Archive::new();
            for name in order {
                archive.add(name, Node::File(0o644, name.as_bytes().to_vec()));
            }
            let mut bytes = Vec::new();
            archive.write_to(&mut bytes).unwrap();
            bytes
        };
        assert_eq!(build(&["a/b", "c", "a/d"]), build(&["c", "a/d", "a/b"]));
    }
}
