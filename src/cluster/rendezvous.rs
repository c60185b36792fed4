//! Rendezvous (highest-random-weight) hashing: every replica that sees the
//! same members picks the same owner for a key, with no coordination, and
//! a member joining or leaving moves only the keys it wins or held (about
//! 1/N of them), unlike a modulo. Keys, not repositories, are hashed, so
//! one image's layers spread over the fleet.
//!
//! The weight is SHA-256 of the member and the key: stable across builds,
//! platforms and Rust versions (a `std` hasher is not), which replicas of
//! different versions in a rolling update must agree on. It is computed
//! only on a miss, a few microseconds per member.

use sha2::{Digest, Sha256};

/// The member of `members` with the highest weight for `key`, if any.
pub fn owner<'m>(key: &str, members: impl IntoIterator<Item = &'m str>) -> Option<&'m str> {
    members
        .into_iter()
        .map(|member| (weight(member, key), member))
        .max()
        .map(|(_, member)| member)
}

/// The weight of `member` for `key`: the first 8 bytes of
/// SHA-256(member, NUL, key).
fn weight(member: &str, key: &str) -> u64 {
    let mut hash = Sha256::new();
    hash.update(member.as_bytes());
    hash.update([0]);
    hash.update(key.as_bytes());
    let sum = hash.finalize();
    u64::from_be_bytes(sum[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMBERS: [&str; 3] = [
        "http://10.0.0.1:5000",
        "http://10.0.0.2:5000",
        "http://10.0.0.3:5000",
    ];

    fn keys() -> impl Iterator<Item = String> {
        (0..3000).map(|i| format!("blob:sha256:{i:064x}"))
    }

    #[test]
    fn the_order_of_members_does_not_matter() {
        let reversed: Vec<&str> = MEMBERS.iter().rev().copied().collect();
        for key in keys().take(200) {
            assert_eq!(owner(&key, MEMBERS), owner(&key, reversed.iter().copied()));
        }
        assert_eq!(owner("k", std::iter::empty()), None);
    }

    #[test]
    fn keys_spread_over_every_member() {
        let mut counts = [0usize; 3];
        for key in keys() {
            let won = owner(&key, MEMBERS).unwrap();
            counts[MEMBERS.iter().position(|m| *m == won).unwrap()] += 1;
        }
        // 1,000 expected each; a fair hash stays well within ±15%.
        assert!(counts.iter().all(|c| (850..1150).contains(c)), "{counts:?}");
    }

    #[test]
    fn a_member_leaving_moves_only_its_own_keys() {
        for key in keys() {
            let before = owner(&key, MEMBERS).unwrap();
            let after = owner(&key, MEMBERS[..2].iter().copied()).unwrap();
            if before != MEMBERS[2] {
                assert_eq!(before, after, "{key} moved though its owner stayed");
            }
        }
    }
}
