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
//! - [`config`], [`metrics`], [`digest`], [`reference`], [`singleflight`]:
//!   the shared pieces.
//! - [`listen`]: accepts connections (TLS optional) within timeouts and
//!   limits, and serves the router on them.
//! - [`server`]: wires it all together and serves until shutdown.

pub mod api;
pub mod cache;
pub mod config;
pub mod digest;
pub mod listen;
pub mod metrics;
pub mod reference;
pub mod registry;
pub mod server;
pub mod singleflight;
pub mod upstream;
