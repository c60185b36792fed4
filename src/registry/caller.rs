//! Who a request is answered for, and how far its misses may go.

use super::ClientId;

/// The client a request is answered for (whose fair share pays for any
/// pull it causes) and the scope of its misses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub client: ClientId,
    pub scope: Scope,
}

/// Where a miss may be fetched from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Scope {
    /// A client's request: a miss is asked of the key's owner in the
    /// fleet, when that is another replica.
    #[default]
    Fleet,
    /// Another replica's request to this one as the key's owner: answered
    /// from this replica's tiers or its own fetch, never forwarded again
    /// (so a request crosses the fleet at most once).
    Local,
}

impl Caller {
    /// A client's own request.
    pub fn client(client: ClientId) -> Caller {
        Caller {
            client,
            scope: Scope::Fleet,
        }
    }

    /// A request another replica made for `client`.
    pub fn peer(client: ClientId) -> Caller {
        Caller {
            client,
            scope: Scope::Local,
        }
    }
}
