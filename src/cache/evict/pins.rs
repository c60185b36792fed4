//! Pinned objects, exempt from eviction until unpinned.
//!
//! A pin has a root (the digest it was asked for: an image's manifest or
//! index, or a single object) and the digests it covers (for an image,
//! everything it references). Pins are kept in `pins.json` beside the
//! objects, rewritten whole through a temporary file and a rename on each
//! change, so a restart keeps them and a crash leaves the old set or the
//! new one. Changes are rare (an operator pinning before a rollout), so
//! the file's cost does not matter; lookups are a hash probe.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};

use crate::digest::Digest;

/// The pinned roots and what each covers.
#[derive(Debug)]
pub(super) struct Pins {
    path: PathBuf,
    roots: BTreeMap<Digest, BTreeSet<Digest>>,
    /// How many roots cover each digest.
    covered: HashMap<Digest, usize>,
}

impl Pins {
    /// The pins saved at `path`, or none when there is no file yet.
    pub fn load(path: &Path) -> io::Result<Pins> {
        let mut pins = Pins {
            path: path.to_owned(),
            roots: BTreeMap::new(),
            covered: HashMap::new(),
        };
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(pins),
            Err(e) => return Err(e),
        };
        let saved: BTreeMap<String, BTreeSet<String>> = serde_json::from_slice(&text)
            .map_err(|e| io::Error::other(format!("{}: {e}", path.display())))?;
        for (root, members) in saved {
            let parse = |d: &str| {
                d.parse::<Digest>()
                    .map_err(|e| io::Error::other(format!("{}: {e}", path.display())))
            };
            let members = members.iter().map(|m| parse(m)).collect::<Result<_, _>>()?;
            pins.insert(parse(&root)?, members);
        }
        Ok(pins)
    }

    /// Whether any pin covers `digest`.
    pub fn covers(&self, digest: &Digest) -> bool {
        self.covered.contains_key(digest)
    }

    /// The pinned roots, each with how many digests it covers.
    pub fn roots(&self) -> Vec<(Digest, usize)> {
        self.roots
            .iter()
            .map(|(root, members)| (root.clone(), members.len()))
            .collect()
    }

    /// Pins `root` with everything in `members` (and `root` itself),
    /// replacing an earlier pin of the same root; saved before it returns.
    pub fn pin(&mut self, root: Digest, mut members: BTreeSet<Digest>) -> io::Result<()> {
        members.insert(root.clone());
        self.remove(&root);
        self.insert(root, members);
        self.save()
    }

    /// Unpins `root`; false when it was not pinned.
    pub fn unpin(&mut self, root: &Digest) -> io::Result<bool> {
        if !self.remove(root) {
            return Ok(false);
        }
        self.save().map(|()| true)
    }

    /// Adds `more` to every pin that covers `member`: what a pinned
    /// manifest references, learned when it is served. Saves only when
    /// something was added; returns whether it was.
    pub fn extend(&mut self, member: &Digest, more: &[Digest]) -> io::Result<bool> {
        if !self.covers(member) {
            return Ok(false);
        }
        let mut added = false;
        for members in self.roots.values_mut() {
            if !members.contains(member) {
                continue;
            }
            for digest in more {
                if members.insert(digest.clone()) {
                    *self.covered.entry(digest.clone()).or_default() += 1;
                    added = true;
                }
            }
        }
        if added {
            self.save()?;
        }
        Ok(added)
    }

    fn insert(&mut self, root: Digest, members: BTreeSet<Digest>) {
        for digest in &members {
            *self.covered.entry(digest.clone()).or_default() += 1;
        }
        self.roots.insert(root, members);
    }

    fn remove(&mut self, root: &Digest) -> bool {
        let Some(members) = self.roots.remove(root) else {
            return false;
        };
        for digest in members {
            if let Some(count) = self.covered.get_mut(&digest) {
                *count -= 1;
                if *count == 0 {
                    self.covered.remove(&digest);
                }
            }
        }
        true
    }

    fn save(&self) -> io::Result<()> {
        let saved: BTreeMap<&str, Vec<&str>> = self
            .roots
            .iter()
            .map(|(root, members)| (root.as_str(), members.iter().map(Digest::as_str).collect()))
            .collect();
        let temp = self
            .path
            .with_extension(format!("{}.tmp", rand::random::<u64>()));
        std::fs::write(&temp, serde_json::to_vec_pretty(&saved)?)?;
        std::fs::rename(&temp, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::sha256_of(&[n])
    }

    #[test]
    fn pins_cover_their_members_and_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins.json");
        let mut pins = Pins::load(&path).unwrap();
        pins.pin(d(1), [d(2), d(3)].into()).unwrap();
        pins.pin(d(4), [d(3)].into()).unwrap();
        assert!(pins.covers(&d(1)) && pins.covers(&d(2)) && pins.covers(&d(3)));
        assert!(!pins.covers(&d(5)));

        let mut reloaded = Pins::load(&path).unwrap();
        assert_eq!(reloaded.roots(), pins.roots());
        assert!(reloaded.unpin(&d(1)).unwrap());
        assert!(!reloaded.unpin(&d(1)).unwrap(), "only once");
        assert!(!reloaded.covers(&d(2)));
        assert!(reloaded.covers(&d(3)), "still covered by the other pin");
        assert_eq!(Pins::load(&path).unwrap().roots(), vec![(d(4), 2)]);
    }

    #[test]
    fn pins_grow_with_what_their_members_reference() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins.json");
        let mut pins = Pins::load(&path).unwrap();
        pins.pin(d(1), [].into()).unwrap();
        assert!(
            !pins.extend(&d(9), &[d(10)]).unwrap(),
            "not pinned: nothing"
        );
        assert!(pins.extend(&d(1), &[d(2), d(3)]).unwrap());
        assert!(!pins.extend(&d(1), &[d(2)]).unwrap(), "nothing new");
        assert!(Pins::load(&path).unwrap().covers(&d(3)));
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins.json");
        std::fs::write(&path, b"{\"sha256:zz\": []}").unwrap();
        let err = Pins::load(&path).unwrap_err().to_string();
        assert!(err.contains("pins.json"), "{err}");
    }
}
