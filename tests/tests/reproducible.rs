//! Reproducibility: two clones of the checkout, in different directories, build byte-identical
//! images, each with a cold build directory of its own: nothing compiled earlier, at another time
//! or from another path, is reused. (Sharing the test run's build directory would also be wrong
//! the other way: cargo keys workspace crates by their checkout-relative paths, so a clone's
//! fresher artifacts would later pass for the main checkout's.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

use coffer_tests::{checkout, coffer, run_command};

fn clone_to(dest: &Path) {
    let status = Command::new("git")
        .args(["clone", "--quiet", "--no-hardlinks"])
        .arg(checkout())
        .arg(dest)
        .status()
        .expect("run git");
    assert!(status.success(), "git clone of the checkout failed");
}

#[test]
fn the_kms_image_builds_bit_for_bit_identical_from_two_checkout_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let first = tmp.path().join("one/coffer");
    let second = tmp.path().join("a/much/longer/path/elsewhere");
    clone_to(&first);
    clone_to(&second);
    let mut outputs = Vec::new();
    for (index, source) in [&first, &second].into_iter().enumerate() {
        let out = tmp.path().join(format!("out{index}"));
        let mut command = coffer();
        command.env(
            "CARGO_TARGET_DIR",
            tmp.path().join(format!("cold-target{index}")),
        );
        let outcome = run_command(
            command,
            &[
                "image",
                "build",
                "kms",
                "--source",
                source.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
        );
        assert_eq!(outcome.code, 0, "{outcome:?}");
        outputs.push(out);
    }
    let mut names: Vec<_> = std::fs::read_dir(&outputs[0])
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names.len(), 6, "{names:?}");
    for name in names {
        let a = std::fs::read(outputs[0].join(&name)).unwrap();
        let b = std::fs::read(outputs[1].join(&name)).unwrap();
        assert!(
            a == b,
            "{} differs between the two builds",
            name.to_string_lossy()
        );
    }
}
