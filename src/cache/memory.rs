//! The memory tier: manifests and small blobs, weighed by their bytes and
//! evicted by moka's TinyLFU policy when the configured total is reached.

use bytes::Bytes;
use moka::sync::Cache;

use super::read::read_whole;
use super::{CacheError, Content, Object, ObjectKey, ObjectMeta, Payload, Tier, Verified};

/// Bytes held per object beyond the content itself, so a flood of tiny
/// objects cannot exceed the budget unseen.
const OVERHEAD: u64 = 128;

/// Holds objects up to `max_object_bytes`, within `max_bytes` in all.
pub struct MemoryTier {
    objects: Cache<ObjectKey, (ObjectMeta, Bytes)>,
    max_object_bytes: u64,
}

impl MemoryTier {
    /// A tier of `max_bytes` in total; zero holds nothing.
    pub fn new(max_bytes: u64, max_object_bytes: u64) -> Self {
        let objects = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_, (meta, _): &(ObjectMeta, Bytes)| {
                u32::try_from(meta.size + OVERHEAD).unwrap_or(u32::MAX)
            })
            .build();
        let max_object_bytes = if max_bytes == 0 { 0 } else { max_object_bytes };
        MemoryTier {
            objects,
            max_object_bytes,
        }
    }

    /// Whether an object of `size` bytes belongs in this tier.
    pub fn accepts(&self, size: u64) -> bool {
        size <= self.max_object_bytes
    }

    /// Bytes (with per-object overhead) and objects held. Settles moka's
    /// pending bookkeeping first, so a scrape sees every insert so far.
    pub fn held(&self) -> (u64, u64) {
        self.objects.run_pending_tasks();
        (self.objects.weighted_size(), self.objects.entry_count())
    }

    /// The bytes the tier may hold in all.
    pub fn capacity(&self) -> u64 {
        self.objects.policy().max_capacity().unwrap_or(0)
    }

    /// A synchronous lookup for the hot path: no future, no allocation.
    pub fn get(&self, key: &ObjectKey) -> Option<Object> {
        self.objects.get(key).map(|(meta, bytes)| Object {
            meta,
            content: Content::Memory(bytes),
        })
    }
}

#[async_trait::async_trait]
impl Tier for MemoryTier {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn lookup(&self, key: &ObjectKey) -> Result<Option<Object>, CacheError> {
        Ok(self.get(key))
    }

    async fn store(&self, object: &Verified) -> Result<(), CacheError> {
        if !self.accepts(object.meta().size) {
            return Ok(());
        }
        let bytes = match (object.payload(), object.payload().file()) {
            (Payload::Bytes(bytes), _) => bytes.clone(),
            (_, file) => {
                let file = file.expect("payloads other than bytes are files").clone();
                read_whole(file, object.meta().size)
                    .await
                    .map_err(|source| CacheError::Io {
                        tier: "memory",
                        context: "reading a download to hold in memory".into(),
                        source,
                    })?
            }
        };
        self.objects
            .insert(object.key().clone(), (object.meta().clone(), bytes));
        Ok(())
    }
}
