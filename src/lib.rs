//! pullthrough: a pull-through caching mirror for container registries.
//!
//! The crate reads top-down like the path of a request:
//! - [`api`]: HTTP only. Parses `/v2/...`, renders OCI errors, logs and
//!   counts every request's [`registry::Outcome`] in one layer.
//! - [`registry`]: decides hit, miss, coalesce, revalidate or stale for
//!   manifests, tags and blobs.
//! - [`cache`]: content-addressed tiers (memory, disk) behind one trait,
//!   and single-flight downloads.
//! - [`upstream`]: the configured registries, their auth and rate limits.
//! - [`cluster`]: the other replicas; each key's owner fetches it for the
//!   fleet, and the others ask the owner.
//! - [`config`], [`metrics`], [`clock`], [`digest`], [`reference`](mod@reference), [`singleflight`]:
//!   the shared pieces.
//! - [`status`]: the operator's view (status page, `pullthrough status`).
//! - [`cli`]: the operator commands `status`, `warm` and `doctor`.
//! - [`listen`]: accepts connections (TLS optional) within timeouts and
//!   limits, and serves the router on them.
//! - [`logsink`]: where log lines go, written out by a thread of its own.
//! - [`server`]: wires it all together and serves until shutdown.
//! - `parsers`: every parser of client or upstream input in one place, for
//!   the property tests and the fuzz targets (`fuzz/`); not an API.

pub mod api;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod digest;
pub mod listen;
pub mod logsink;
pub mod metrics;
#[doc(hidden)]
pub mod parsers;
pub mod reference;
pub mod registry;
pub mod server;
pub mod singleflight;
pub mod status;
pub mod upstream;
