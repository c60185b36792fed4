//! The tiers composed: lookups go top-down (memory, disk, then any shared
//! tier), a hit below the top is copied up when small enough, and stores go
//! to every tier.

use std::sync::Arc;

use bytes::Bytes;

use super::read::{map_file, read_whole};
use super::{CacheError, Content, DiskTier, MemoryTier, Object, ObjectKey, S3Tier, Tier, Verified};

/// How often uploads missed during an S3 outage are retried.
const CATCH_UP_EVERY: std::time::Duration = std::time::Duration::from_secs(3);

/// The cache as the rest of pullthrough sees it; cheap to clone.
#[derive(Clone)]
pub struct TieredCache {
    memory: Arc<MemoryTier>,
    disk: Arc<DiskTier>,
    shared: Option<Arc<S3Tier>>,
    /// Every tier in lookup order, `memory` and `disk` included.
    tiers: Arc<[Arc<dyn Tier>]>,
}

impl TieredCache {
    /// Memory over disk, over the shared tier when there is one.
    pub fn new(memory: MemoryTier, disk: DiskTier, shared: Option<Arc<S3Tier>>) -> Self {
        let memory = Arc::new(memory);
        let disk = Arc::new(disk);
        let mut tiers: Vec<Arc<dyn Tier>> = vec![memory.clone(), disk.clone()];
        if let Some(shared) = &shared {
            tiers.push(shared.clone());
        }
        TieredCache {
            memory,
            disk,
            shared,
            tiers: tiers.into(),
        }
    }

    /// The shared tier, if configured: blobs stream from it through flights.
    pub fn shared(&self) -> Option<&Arc<S3Tier>> {
        self.shared.as_ref()
    }

    /// The memory tier, for the synchronous hot path.
    pub fn memory(&self) -> &MemoryTier {
        &self.memory
    }

    /// The disk tier, which also holds downloads in progress.
    pub fn disk(&self) -> &DiskTier {
        &self.disk
    }

    /// The object and the name of the tier that held it.
    pub async fn lookup(
        &self,
        key: &ObjectKey,
    ) -> Result<Option<(Object, &'static str)>, CacheError> {
        for (level, tier) in self.tiers.iter().enumerate() {
            let Some(object) = tier.lookup(key).await? else {
                continue;
            };
            let object = if level > 0 {
                self.promote(key, object, level).await
            } else {
                object
            };
            return Ok(Some((object, tier.name())));
        }
        Ok(None)
    }

    /// Copies a small object into the tiers above `level`; large ones stay
    /// where they are. Failures only cost a later miss, so they are logged.
    async fn promote(&self, key: &ObjectKey, object: Object, level: usize) -> Object {
        if !self.memory.accepts(object.meta.size) {
            return object;
        }
        let bytes = match &object.content {
            Content::Memory(bytes) => bytes.clone(),
            Content::File(file) => match read_whole(file.clone(), object.meta.size).await {
                Ok(bytes) => bytes,
                Err(_) => return object,
            },
        };
        let verified = Verified::from_tier(key.clone(), object.meta.clone(), bytes.clone());
        for tier in &self.tiers[..level] {
            if let Err(e) = tier.store(&verified).await {
                tracing::warn!(error = %e, "could not copy an object up the cache");
            }
        }
        Object {
            meta: object.meta,
            content: Content::Memory(bytes),
        }
    }

    /// Stores a verified object in every tier. One tier failing does not
    /// stop the others; the first failure is returned.
    pub async fn store(&self, object: &Verified) -> Result<(), CacheError> {
        self.store_in(&self.tiers, object).await
    }

    /// Stores an object that came from the shared tier in the local ones.
    pub async fn store_local(&self, object: &Verified) -> Result<(), CacheError> {
        self.store_in(&self.tiers[..2], object).await
    }

    /// Uploads what the shared tier missed while it was down, from the disk
    /// tier, every few seconds for as long as the process runs.
    pub fn spawn_catch_up(&self) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let disk = self.disk.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(CATCH_UP_EVERY).await;
                for key in shared.take_pending() {
                    let Ok(Some(object)) = disk.lookup(&key).await else {
                        continue;
                    };
                    let verified = match object.content {
                        Content::File(file) => Verified::from_tier_file(key, object.meta, file),
                        Content::Memory(bytes) => Verified::from_tier(key, object.meta, bytes),
                    };
                    if shared.store(&verified).await.is_ok() {
                        tracing::info!(digest = %verified.key().digest, "caught up an upload to S3");
                    }
                }
            }
        });
    }

    async fn store_in(&self, tiers: &[Arc<dyn Tier>], object: &Verified) -> Result<(), CacheError> {
        let mut first_error = None;
        for tier in tiers {
            if let Err(e) = tier.store(object).await {
                tracing::warn!(tier = tier.name(), error = %e, "could not store an object");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Content {
    /// Bytes `start..end` of a cached object of `size` bytes (`end` is
    /// clamped to `size`). Files are mapped, not read, so this is cheap for
    /// any size.
    pub fn slice(&self, start: u64, end: u64, size: u64) -> std::io::Result<Bytes> {
        let bytes = match self {
            Content::Memory(bytes) => bytes.clone(),
            Content::File(file) => map_file(file, size)?,
        };
        let end = end.min(bytes.len() as u64) as usize;
        Ok(bytes.slice((start as usize).min(end)..end))
    }
}
