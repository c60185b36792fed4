//! The disk side of crash and disk-full tests: a small tmpfs to fill, and
//! checks that a data directory's cache holds only whole objects.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

/// A tmpfs mounted on a directory for as long as this lives.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs with `options` (such as `size=8m`) on `dir`; panics
    /// where mounting is not permitted (not root, no `CAP_SYS_ADMIN`), as
    /// the test suite runs as root.
    pub fn mount(dir: &Path, options: &str) -> Tmpfs {
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            mounted,
            "this test needs to mount a tmpfs (run as root, or in a container with CAP_SYS_ADMIN)"
        );
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Every file under `dir`, recursively; none when it does not exist.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|e| match e.path().is_dir() {
            true => files_under(&e.path()),
            false => vec![e.path()],
        })
        .collect()
}

/// Checks that every blob and manifest under a disk tier's `cache` root
/// hashes to the name it is stored under (media-type files aside), and
/// returns how many there are. A partial or corrupt object fails it.
pub fn assert_objects_whole(cache: &Path) -> usize {
    let mut objects = 0;
    for kind in ["blobs", "manifests"] {
        for file in files_under(&cache.join(kind)) {
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            if name.ends_with(".type") {
                continue;
            }
            let bytes = std::fs::read(&file).unwrap();
            assert_eq!(
                hex::encode(Sha256::digest(&bytes)),
                name,
                "{} holds a whole object",
                file.display()
            );
            objects += 1;
        }
    }
    objects
}
