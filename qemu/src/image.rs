//! Loading an image directory and checking it against its manifest before it is booted.

use std::path::{Path, PathBuf};

use coffer_types::{ImageManifest, IMAGE_MANIFEST_FILE, IMAGE_MANIFEST_VERSION};
use sha2::{Digest, Sha256};

use crate::LaunchError;

/// A built image whose files match its manifest.
#[derive(Debug, Clone)]
pub struct Image {
    /// The image directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: ImageManifest,
}

impl Image {
    /// Reads `dir/manifest.json` and checks every output file's sha256 against it.
    pub fn open(dir: &Path) -> Result<Self, LaunchError> {
        let not_image = |reason: String| LaunchError::NotAnImage {
            dir: dir.display().to_string(),
            reason,
        };
        let path = dir.join(IMAGE_MANIFEST_FILE);
        let bytes =
            std::fs::read(&path).map_err(|e| not_image(format!("{IMAGE_MANIFEST_FILE}: {e}")))?;
        let manifest: ImageManifest = serde_json::from_slice(&bytes)
            .map_err(|e| not_image(format!("{IMAGE_MANIFEST_FILE}: {e}")))?;
        if manifest.format_version != IMAGE_MANIFEST_VERSION {
            return Err(not_image(format!(
                "manifest format_version {} (this launcher reads {IMAGE_MANIFEST_VERSION})",
                manifest.format_version
            )));
        }
        for output in &manifest.outputs {
            let file = dir.join(&output.path);
            let bytes = std::fs::read(&file).map_err(|e| LaunchError::io(&file, e))?;
            let got = hex::encode(Sha256::digest(&bytes));
            if got != output.sha256 {
                return Err(LaunchError::ImageTampered {
                    path: file.display().to_string(),
                    expected: output.sha256.clone(),
                    got,
                });
            }
        }
        for needed in ["kernel", "initramfs"] {
            if !manifest.outputs.iter().any(|o| o.name == needed) {
                return Err(not_image(format!("the manifest lists no {needed}")));
            }
        }
        Ok(Image {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    /// Path of the output named `name` (`kernel`, `initramfs`, ...).
    pub fn output(&self, name: &str) -> Option<PathBuf> {
        self.manifest
            .outputs
            .iter()
            .find(|o| o.name == name)
            .map(|o| self.dir.join(&o.path))
    }
}
