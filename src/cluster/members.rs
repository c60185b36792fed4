//! Who the fleet is: the member list (configured, or looked up in DNS),
//! which member is this replica, and which are up.
//!
//! A member is passed over while its last probe failed or a request to it
//! failed within `down_for`; until its first probe it counts as up (a
//! member that is not there refuses the connection at once, and is then
//! marked down). Replicas may briefly disagree on who is up: the cost is
//! a key fetched twice, never an error.

use std::sync::RwLock;

use super::rendezvous;
use crate::clock::now_ms;

/// One member as the status page and `doctor` show it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MemberView {
    /// The member's base URL.
    pub url: String,
    /// `self`, `up`, `down`, or `unknown` before its first probe.
    pub state: &'static str,
    /// Why it is down, when it is.
    pub error: Option<String>,
}

#[derive(Clone, Debug)]
struct Entry {
    url: String,
    is_self: bool,
    /// The last probe's answer; `None` before the first.
    probed_up: Option<bool>,
    /// Passed over until then (ms), after a failed request.
    down_until_ms: u64,
    error: Option<String>,
}

impl Entry {
    fn new(url: String, advertised: Option<&str>) -> Entry {
        Entry {
            is_self: advertised == Some(url.as_str()),
            url,
            probed_up: None,
            down_until_ms: 0,
            error: None,
        }
    }

    fn usable(&self, now: u64) -> bool {
        self.is_self || (self.probed_up != Some(false) && now >= self.down_until_ms)
    }
}

/// The member list and each member's state; shared by the prober and
/// every miss (a read lock on a miss, never on a hit).
pub(super) struct Members {
    entries: RwLock<Vec<Entry>>,
    advertised: RwLock<Option<String>>,
    down_for_ms: u64,
}

/// Which replica fetches a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Winner {
    Me,
    Peer(String),
}

impl Members {
    pub(super) fn new(down_for_ms: u64) -> Members {
        Members {
            entries: RwLock::new(Vec::new()),
            advertised: RwLock::new(None),
            down_for_ms,
        }
    }

    /// Sets this replica's own URL (normalised), marking its entry.
    pub(super) fn advertise(&self, url: String) {
        let mut entries = self.entries.write().expect("members lock");
        for entry in entries.iter_mut() {
            entry.is_self |= entry.url == url;
        }
        *self.advertised.write().expect("advertised lock") = Some(url);
    }

    /// Replaces the member list (normalised URLs), keeping what is known
    /// of members that stay.
    pub(super) fn set(&self, urls: Vec<String>) {
        let advertised = self.advertised.read().expect("advertised lock").clone();
        let mut entries = self.entries.write().expect("members lock");
        let mut next: Vec<Entry> = urls
            .into_iter()
            .map(|url| match entries.iter().find(|e| e.url == url) {
                Some(known) => known.clone(),
                None => Entry::new(url, advertised.as_deref()),
            })
            .collect();
        next.sort_by(|a, b| a.url.cmp(&b.url));
        next.dedup_by(|a, b| a.url == b.url);
        *entries = next;
    }

    /// The URLs to probe: every member not known to be this replica.
    pub(super) fn to_probe(&self) -> Vec<String> {
        let entries = self.entries.read().expect("members lock");
        entries
            .iter()
            .filter(|e| !e.is_self)
            .map(|e| e.url.clone())
            .collect()
    }

    /// Records a probe of `url`: `Ok(true)` when the member turned out to
    /// be this replica.
    pub(super) fn probed(&self, url: &str, answer: Result<bool, String>) {
        let mut entries = self.entries.write().expect("members lock");
        let Some(entry) = entries.iter_mut().find(|e| e.url == url) else {
            return;
        };
        match answer {
            Ok(is_self) => {
                entry.is_self |= is_self;
                entry.probed_up = Some(true);
                entry.error = None;
            }
            Err(error) => {
                entry.probed_up = Some(false);
                entry.error = Some(error);
            }
        }
    }

    /// Passes over `url` for `down_for` after a request to it failed.
    pub(super) fn mark_down(&self, url: &str, error: String) {
        let mut entries = self.entries.write().expect("members lock");
        if let Some(entry) = entries.iter_mut().find(|e| e.url == url) {
            entry.down_until_ms = now_ms() + self.down_for_ms;
            entry.error = Some(error);
        }
    }

    /// The member that fetches `key`, among those usable now.
    pub(super) fn winner(&self, key: &str) -> Winner {
        let now = now_ms();
        let entries = self.entries.read().expect("members lock");
        let usable = entries.iter().filter(|e| e.usable(now));
        let Some(url) = rendezvous::owner(key, usable.map(|e| e.url.as_str())) else {
            return Winner::Me;
        };
        match entries.iter().find(|e| e.url == url) {
            Some(e) if !e.is_self => Winner::Peer(url.to_owned()),
            _ => Winner::Me,
        }
    }

    /// Every member and its state.
    pub(super) fn view(&self) -> Vec<MemberView> {
        let now = now_ms();
        let entries = self.entries.read().expect("members lock");
        entries
            .iter()
            .map(|e| MemberView {
                url: e.url.clone(),
                state: match (e.is_self, e.probed_up, e.usable(now)) {
                    (true, _, _) => "self",
                    (_, _, false) => "down",
                    (_, None, true) => "unknown",
                    (_, Some(_), true) => "up",
                },
                error: e.error.clone().filter(|_| !e.is_self && !e.usable(now)),
            })
            .collect()
    }
}

/// `scheme://host:port` of a base URL, the form members are compared in;
/// `None` for what is not one.
pub fn normalise(url: &str) -> Option<String> {
    let parsed = reqwest::Url::parse(url).ok()?;
    let host = parsed.host_str()?;
    let port = parsed.port_or_known_default()?;
    Some(format!("{}://{host}:{port}", parsed.scheme()).to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(urls: &[&str]) -> Members {
        let m = Members::new(60_000);
        m.set(urls.iter().map(|u| u.to_string()).collect());
        m
    }

    #[test]
    fn urls_are_compared_as_scheme_host_and_port() {
        assert_eq!(
            normalise("HTTP://Mirror.Internal:5000/").as_deref(),
            Some("http://mirror.internal:5000")
        );
        assert_eq!(
            normalise("https://[::1]").as_deref(),
            Some("https://[::1]:443")
        );
        assert_eq!(normalise("not a url"), None);
    }

    #[test]
    fn every_replica_with_the_same_view_names_the_same_owner() {
        let urls = ["http://a:1", "http://b:1", "http://c:1"];
        let views: Vec<Members> = urls
            .iter()
            .map(|me| {
                let m = members(&urls);
                m.advertise(me.to_string());
                m
            })
            .collect();
        for i in 0..100 {
            let key = format!("blob:{i}");
            let names: Vec<String> = views
                .iter()
                .zip(urls)
                .map(|(m, me)| match m.winner(&key) {
                    Winner::Me => me.to_string(),
                    Winner::Peer(url) => url,
                })
                .collect();
            assert!(names.windows(2).all(|w| w[0] == w[1]), "{key}: {names:?}");
        }
    }

    #[test]
    fn a_member_down_owns_nothing_until_it_answers_again() {
        let m = members(&["http://a:1", "http://b:1"]);
        m.advertise("http://a:1".into());
        m.probed("http://b:1", Err("refused".into()));
        assert!((0..50).all(|i| m.winner(&format!("k{i}")) == Winner::Me));
        let view = m.view();
        assert_eq!(view[1].state, "down");
        assert_eq!(view[1].error.as_deref(), Some("refused"));
        m.probed("http://b:1", Ok(false));
        assert!((0..50).any(|i| m.winner(&format!("k{i}")) != Winner::Me));
        m.mark_down("http://b:1", "reset".into());
        assert!((0..50).all(|i| m.winner(&format!("k{i}")) == Winner::Me));
    }

    #[test]
    fn a_probe_that_reaches_this_replica_marks_it_as_self() {
        let m = members(&["http://a:1", "http://b:1"]);
        m.probed("http://a:1", Ok(true));
        assert_eq!(m.view()[0].state, "self");
        assert_eq!(m.to_probe(), vec!["http://b:1".to_string()]);
        // A new list keeps what is known of members that stay.
        m.set(vec![
            "http://b:1".into(),
            "http://a:1".into(),
            "http://c:1".into(),
        ]);
        assert_eq!(m.view()[0].state, "self");
        assert_eq!(m.view()[2].state, "unknown");
    }
}
