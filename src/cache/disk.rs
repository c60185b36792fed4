//! The disk tier: objects as files under the data directory, laid out by
//! digest (`blobs/sha256/ab/<hex>`).
//!
//! Crash safety: bytes are written to a file in `tmp/`, fsynced, and only
//! then given their final name with a hard link (atomic, and harmless if a
//! racing writer got there first), after which the directory is fsynced.
//! A crash leaves at most an orphan in `tmp/`, which start-up deletes; a
//! final name always holds a whole, verified object.
//!
//! Every store and hit is reported to the tier's [`Evictor`], which keeps
//! the tier within its bounds. Readers of one object share one open file,
//! which marks the object in use for as long as any of them reads.
//!
//! A file is served only as verified (see `verify`): one this process
//! did not store or has not hashed since, or that changed since, is hashed
//! first, and a damaged one is deleted and is a miss. A slow scrub hashes
//! every file again once a day, for damage that changes nothing else (see
//! `scrub`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use super::evict::{Bounds, Evictor};
use super::probe::DiskProbe;
use super::scrub::{Scrub, Scrubber};
use super::verify::{Fingerprint, Verifications};
use super::{
    CacheError, Content, Object, ObjectKey, ObjectKind, ObjectMeta, Payload, Tier, Verified,
    blocking,
};
use crate::metrics::Metrics;

/// Manifests keep their media type in a file beside them with this suffix.
pub(super) const MEDIA_TYPE_SUFFIX: &str = ".type";

/// Objects on the local file system.
pub struct DiskTier {
    root: PathBuf,
    tmp: PathBuf,
    evictor: Evictor,
    probe: DiskProbe,
    verified: Verifications,
    metrics: Metrics,
    /// The scrub's thread, when one runs; stopped with the tier.
    _scrub: Option<Scrub>,
}

/// Numbers temporary files uniquely within this process.
static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);

/// A file being written in the tier's `tmp/` directory; deleted when dropped,
/// so an abandoned or failed download leaves nothing behind.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
    file: Arc<File>,
}

impl TempFile {
    /// The open file, for writing and for concurrent `read_at`.
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }
}

impl Drop for TempFile {
    /// Unlinking a large abandoned download frees its blocks, which can
    /// take a while: it happens on the file pool, off the async threads.
    fn drop(&mut self) {
        let path = std::mem::take(&mut self.path);
        blocking::detach(move || {
            let _ = fs::remove_file(path);
        });
    }
}

fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> CacheError {
    let context = context.into();
    move |source| CacheError::Io {
        tier: "disk",
        context,
        source,
    }
}

/// Runs blocking file-system work on the bounded file pool.
async fn on_pool<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, CacheError> + Send + 'static,
) -> Result<T, CacheError> {
    blocking::run(work).await.map_err(|e| CacheError::Other {
        tier: "disk",
        message: e.to_string(),
    })?
}

impl DiskTier {
    /// Opens (creating) the tier under `root` without bounds, and deletes
    /// leftovers of writes a crash interrupted.
    pub fn open(root: &Path) -> Result<Self, CacheError> {
        DiskTier::open_bounded(root, Bounds::unbounded(), Metrics::new())
    }

    /// Opens the tier under `root`, kept within `bounds` (see `evict`);
    /// its size and evictions are reported in `metrics`. Returns at once:
    /// the files already there are counted in the background.
    pub fn open_bounded(root: &Path, bounds: Bounds, metrics: Metrics) -> Result<Self, CacheError> {
        let tmp = root.join("tmp");
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io_error(format!("clearing {}", tmp.display())))?;
        }
        fs::create_dir_all(&tmp).map_err(io_error(format!("creating {}", tmp.display())))?;
        let evictor = Evictor::start(root, bounds, metrics.clone()).map_err(io_error(format!(
            "starting the accounting of {}",
            root.display()
        )))?;
        Ok(DiskTier {
            root: root.to_owned(),
            probe: DiskProbe::new(tmp.clone()),
            tmp,
            evictor,
            verified: Verifications::default(),
            metrics,
            _scrub: None,
        })
    }

    /// The tier, with every file hashed again once per `interval` in the
    /// background (see `scrub`); zero runs no scrub.
    pub fn with_scrub(mut self, interval: std::time::Duration) -> Self {
        if !interval.is_zero() {
            let scrubber = Scrubber {
                root: self.root.clone(),
                evictor: self.evictor.clone(),
                verified: self.verified.clone(),
                metrics: self.metrics.clone(),
            };
            self._scrub = Some(scrubber.start(interval));
        }
        self
    }

    /// The tier's accounting, pins and holds.
    pub fn evictor(&self) -> &Evictor {
        &self.evictor
    }

    /// Whether the tier can take writes, probed now and then.
    pub fn probe(&self) -> &DiskProbe {
        &self.probe
    }

    /// Deletes every temporary file of the tier under `root`: at shutdown,
    /// once downloads stopped, so that a stopped replica leaves nothing
    /// half-written behind. Returns how many there were.
    pub fn clear_temp(root: &Path) -> Result<usize, CacheError> {
        let tmp = root.join("tmp");
        let entries = match fs::read_dir(&tmp) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io_error(format!("listing {}", tmp.display()))(e)),
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            if fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The directory the tier lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A new file in `tmp/` for a download, sized up front to `size` when
    /// that is known (so it can be mapped whole while it is written).
    pub async fn create_temp(&self, size: Option<u64>) -> Result<TempFile, CacheError> {
        let tmp = self.tmp.clone();
        on_pool(move || {
            let temp = create_temp_in(&tmp)?;
            if let Some(size) = size {
                temp.file
                    .set_len(size)
                    .map_err(io_error(format!("sizing {}", temp.path.display())))?;
            }
            Ok(temp)
        })
        .await
    }

    /// The object's file, as it is, with its fingerprint: not yet known
    /// to be good (see `verify`).
    fn lookup_blocking(
        root: &Path,
        evictor: &Evictor,
        key: &ObjectKey,
    ) -> Result<Option<(Object, Fingerprint)>, CacheError> {
        let path = root.join(super::object_path(key));
        let file = match evictor.open_file(key) {
            Some(file) => file,
            None => match File::open(&path) {
                Ok(file) => Arc::new(file),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    evictor.forget(key);
                    return Ok(None);
                }
                Err(e) => return Err(io_error(format!("opening {}", path.display()))(e)),
            },
        };
        let meta = file
            .metadata()
            .map_err(io_error(format!("reading {}", path.display())))?;
        let (size, print) = (meta.len(), Fingerprint::of(&meta));
        let media_type = match key.kind {
            ObjectKind::Blob => None,
            ObjectKind::Manifest => Some(fs::read_to_string(media_type_path(&path)).map_err(
                io_error(format!("reading the media type of {}", path.display())),
            )?),
        };
        let on_disk = size + media_type.as_ref().map_or(0, |t| t.len() as u64);
        if evictor.hit(key, &file, on_disk) {
            // The last access, kept where a restart finds it (see `evict`).
            let _ = file.set_modified(SystemTime::now());
        }
        let meta = ObjectMeta { size, media_type };
        let object = Object {
            meta,
            content: Content::File(file),
        };
        Ok(Some((object, print)))
    }

    /// Deletes a damaged object's files and forgets it; counted and logged.
    async fn discard_damaged(&self, key: &ObjectKey) {
        tracing::warn!(digest = %key.digest, "a file in the disk tier does not match its digest: deleted, fetching a good copy");
        let (root, evictor, verified, metrics, key) = (
            self.root.clone(),
            self.evictor.clone(),
            self.verified.clone(),
            self.metrics.clone(),
            key.clone(),
        );
        let removed = on_pool(move || {
            let context = format!("deleting the damaged {}", key.digest);
            delete_damaged(&root, &evictor, &verified, &metrics, &key).map_err(io_error(context))
        })
        .await;
        if let Err(e) = removed {
            tracing::warn!(error = %e, "could not delete a damaged object");
        }
    }
}

/// Deletes the file of `key`, found damaged, and forgets it; counted in
/// `pullthrough_cache_corrupt_total{tier="disk"}`. Blocking.
pub(super) fn delete_damaged(
    root: &Path,
    evictor: &Evictor,
    verified: &Verifications,
    metrics: &Metrics,
    key: &ObjectKey,
) -> io::Result<()> {
    metrics.cache.corrupt.with_label_values(&["disk"]).inc();
    verified.forget(key);
    match fs::remove_file(root.join(super::object_path(key))) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    evictor.forget(key);
    Ok(())
}

fn create_temp_in(tmp: &Path) -> Result<TempFile, CacheError> {
    let n = NEXT_TEMP.fetch_add(1, Ordering::Relaxed);
    let path = tmp.join(format!("{}-{n}", std::process::id()));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io_error(format!("creating {}", path.display())))?;
    Ok(TempFile {
        path,
        file: Arc::new(file),
    })
}

impl DiskTier {
    fn store_blocking(
        root: &Path,
        tmp: &Path,
        evictor: &Evictor,
        verified: &Verifications,
        object: &Verified,
    ) -> Result<(), CacheError> {
        let target = root.join(super::object_path(object.key()));
        let dir = target.parent().expect("object paths have a parent");
        fs::create_dir_all(dir).map_err(io_error(format!("creating {}", dir.display())))?;
        if let Some(media_type) = &object.meta().media_type {
            // The media type goes first, so a manifest is never found without it.
            let temp = create_temp_in(tmp)?;
            write_synced(&temp, media_type.as_bytes())?;
            replace(&temp.path, &media_type_path(&target))?;
        }
        let media_type = object.meta().media_type.as_ref();
        let on_disk = object.meta().size + media_type.map_or(0, |t| t.len() as u64);
        if !matches!(object.payload(), Payload::Cached(_)) {
            evictor.make_room(on_disk);
        }
        match object.payload() {
            Payload::Bytes(bytes) => {
                let temp = create_temp_in(tmp)?;
                write_synced(&temp, bytes)?;
                link(&temp.path, &target)?;
            }
            Payload::File(temp) => {
                temp.file
                    .sync_all()
                    .map_err(io_error("syncing a download"))?;
                link(&temp.path, &target)?;
            }
            // Already in this tier: it was read from here.
            Payload::Cached(_) => return Ok(()),
        }
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error(format!("syncing {}", dir.display())))?;
        // The file as linked (linking moves its ctime) holds verified
        // bytes, unless a racing writer's file got the name: that one is
        // checked on its first lookup.
        if let Ok(meta) = fs::metadata(&target)
            && meta.len() == object.meta().size
        {
            verified.trust(object.key(), Fingerprint::of(&meta));
        }
        evictor.stored(object.key(), on_disk);
        Ok(())
    }
}

/// Where a manifest's media type is kept, beside it.
pub(super) fn media_type_path(object: &Path) -> PathBuf {
    let mut name = object.as_os_str().to_owned();
    name.push(MEDIA_TYPE_SUFFIX);
    PathBuf::from(name)
}

fn write_synced(temp: &TempFile, bytes: &[u8]) -> Result<(), CacheError> {
    (&*temp.file)
        .write_all(bytes)
        .and_then(|()| temp.file.sync_all())
        .map_err(io_error(format!("writing {}", temp.path.display())))
}

/// Gives `temp` the name `target` unless a racing writer already did.
fn link(temp: &Path, target: &Path) -> Result<(), CacheError> {
    match fs::hard_link(temp, target) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_error(format!("linking {}", target.display()))(e)),
    }
}

fn replace(temp: &Path, target: &Path) -> Result<(), CacheError> {
    fs::rename(temp, target).map_err(io_error(format!("renaming to {}", target.display())))
}

#[async_trait::async_trait]
impl Tier for DiskTier {
    fn name(&self) -> &'static str {
        "disk"
    }

    async fn lookup(&self, key: &ObjectKey) -> Result<Option<Object>, CacheError> {
        let (root, evictor, owned) = (self.root.clone(), self.evictor.clone(), key.clone());
        let found = on_pool(move || DiskTier::lookup_blocking(&root, &evictor, &owned)).await?;
        let Some((object, print)) = found else {
            return Ok(None);
        };
        let Content::File(file) = &object.content else {
            return Ok(Some(object));
        };
        if self.verified.check(key, file.clone(), print).await {
            return Ok(Some(object));
        }
        self.discard_damaged(key).await;
        Ok(None)
    }

    async fn store(&self, object: &Verified) -> Result<(), CacheError> {
        let (root, tmp, object) = (self.root.clone(), self.tmp.clone(), object.clone());
        let (evictor, verified) = (self.evictor.clone(), self.verified.clone());
        on_pool(move || DiskTier::store_blocking(&root, &tmp, &evictor, &verified, &object)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use bytes::Bytes;

    #[tokio::test(flavor = "multi_thread")]
    async fn stores_verified_objects_under_their_digest_and_finds_them_again() {
        let dir = tempfile::tempdir().unwrap();
        let tier = DiskTier::open(dir.path()).unwrap();
        let body = Bytes::from_static(b"{\"schemaVersion\":2}");
        let key = ObjectKey::manifest(Digest::sha256_of(&body));
        let media = "application/vnd.oci.image.manifest.v1+json".to_owned();
        let object = Verified::bytes(key.clone(), Some(media.clone()), body.clone()).unwrap();
        tier.store(&object).await.unwrap();
        tier.store(&object).await.unwrap();

        let reopened = DiskTier::open(dir.path()).unwrap();
        let hit = reopened.lookup(&key).await.unwrap().unwrap();
        assert_eq!(hit.meta.size, body.len() as u64);
        assert_eq!(hit.meta.media_type.as_deref(), Some(media.as_str()));
        let Content::File(file) = hit.content else {
            panic!("disk hits are files")
        };
        assert_eq!(
            super::super::read::read_all(&file, hit.meta.size).unwrap(),
            body
        );
        // Temporary names are unlinked on the file pool, just after.
        for _ in 0..500 {
            if fs::read_dir(dir.path().join("tmp")).unwrap().count() == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("temporary files were left behind");
    }

    #[tokio::test]
    async fn leftover_temp_files_are_cleared_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let tier = DiskTier::open(dir.path()).unwrap();
        let temp = tier.create_temp(Some(10)).await.unwrap();
        assert_eq!(temp.file().metadata().unwrap().len(), 10);
        std::mem::forget(temp);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 1);
        DiskTier::open(dir.path()).unwrap();
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
