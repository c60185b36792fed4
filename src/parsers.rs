//! Every parser that reads client or upstream input, reachable from outside
//! the crate for the property tests (`tests/properties.rs`) and the fuzz
//! targets (`fuzz/`). Not an API: the crate calls each parser where it
//! lives; this module only names them together, so a new parser of outside
//! input that is not listed here stands out.

pub use crate::api::range::{ByteRange, parse as range};
pub use crate::digest::Digest;
pub use crate::reference::{Reference, RepoName, Tag, V2Path};
pub use crate::registry::{AcceptSet, KNOWN_MANIFEST_TYPES};
pub use crate::upstream::Challenge;
pub use crate::upstream::budget::{quota, retry_after};
pub use crate::upstream::manifest::{check as check_manifest, check_type as check_manifest_type};
pub use crate::upstream::next_page;
pub use crate::upstream::resume::resumed_at;
