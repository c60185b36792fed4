//! The snapshot as a terminal table, for `pullthrough status`.

use std::io::{self, Write};

use super::page::{bytes, time};
use super::snapshot::Snapshot;

/// Writes the same facts as the status page, one section per block.
pub fn write_table(s: &Snapshot, out: &mut impl Write) -> io::Result<()> {
    let r = &s.requests;
    let ratio = r
        .hit_ratio
        .map_or("–".to_owned(), |h| format!("{:.1}%", h * 100.0));
    writeln!(out, "pullthrough status as of {}", time(s.generated_at))?;
    writeln!(out)?;
    writeln!(
        out,
        "hit ratio      {ratio} ({} hits of {} lookups)",
        r.hits, r.lookups
    )?;
    writeln!(
        out,
        "pulls          {} saved, {} spent",
        s.pulls.saved, s.pulls.spent
    )?;
    writeln!(out, "requests       {} ({} errors)", r.total, r.errors)?;
    writeln!(
        out,
        "downloads      {} active, {} clients streaming",
        s.downloads.active, s.downloads.clients
    )?;

    writeln!(out, "\n{:<10} {:>10} {:>14}", "TIER", "HITS", "SERVED")?;
    for (tier, hits, served) in s.tiers() {
        writeln!(out, "{tier:<10} {hits:>10} {:>14}", bytes(served))?;
    }
    let b = &s.blob_bytes;
    writeln!(
        out,
        "blob bytes     {} sent by this replica, {} by the bucket ({} from the bucket)",
        bytes(b.streamed),
        bytes(b.redirected),
        b.bucket_share()
            .map_or("–".to_owned(), |f| format!("{:.1}%", f * 100.0))
    )?;

    writeln!(
        out,
        "\n{:<20} {:>8} {:>8} {:<22} {:<9} {:<10} {:>6} {:>6}",
        "UPSTREAM", "LEFT", "LIMIT", "RESETS", "STANDING", "CIRCUIT", "SPENT", "SAVED"
    )?;
    for u in &s.upstreams {
        let opt = |v: Option<i64>| v.map_or("-".to_owned(), |v| v.to_string());
        writeln!(
            out,
            "{:<20} {:>8} {:>8} {:<22} {:<9} {:<10} {:>6} {:>6}",
            u.name,
            opt(u.remaining),
            opt(u.limit),
            u.resets_at.map_or("-".to_owned(), time),
            u.standing,
            u.circuit,
            u.pulls_spent,
            u.pulls_saved
        )?;
    }

    writeln!(
        out,
        "\n{:<8} {:>12} {:>9} {:>12} {:>10} {:<9}",
        "CACHE", "SIZE", "OBJECTS", "CAPACITY", "EVICTIONS", "STATE"
    )?;
    for t in &s.cache {
        writeln!(
            out,
            "{:<8} {:>12} {:>9} {:>12} {:>10} {:<9}",
            t.tier,
            t.bytes.map_or("unknown".to_owned(), bytes),
            t.objects.map_or("unknown".to_owned(), |o| o.to_string()),
            t.capacity_bytes.map_or("-".to_owned(), bytes),
            t.evictions,
            t.state
        )?;
    }

    if let Some(fleet) = &s.fleet {
        writeln!(
            out,
            "\nFLEET          {} answered for peers, {} asked of owners, {} fetched here for an owner",
            fleet.served_for_peers, fleet.sent_to_owners, fleet.fallbacks
        )?;
        for m in &fleet.members {
            let why = m.error.as_deref().unwrap_or("");
            writeln!(out, "  {:<40} {:<8} {why}", m.url, m.state)?;
        }
    }

    writeln!(out, "\nHOTTEST IMAGES")?;
    if s.hottest.is_empty() {
        writeln!(out, "  none yet")?;
    }
    for image in &s.hottest {
        writeln!(out, "  {:>8}  {}", image.requests, image.image)?;
    }

    writeln!(out, "\nRECENT ERRORS")?;
    if s.errors.is_empty() {
        writeln!(out, "  none")?;
    }
    for e in &s.errors {
        writeln!(
            out,
            "  {}  {} {} {} {}: {}",
            time(e.at),
            e.status,
            e.method,
            e.path,
            e.code,
            e.message
        )?;
    }
    Ok(())
}
