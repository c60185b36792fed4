//! The status page: one server-rendered HTML document with its style
//! inline, an inline SVG chart, no script and no external asset. It
//! refreshes itself with a `<meta http-equiv="refresh">`. Every figure sits
//! in an element with a `data-value` holding the exact number, so a test
//! (or a scraper) can read what the page shows.

use std::fmt::Write;

use super::snapshot::Snapshot;

/// Seconds between the page's own reloads.
const REFRESH_SECS: u32 = 10;

/// Escapes text for HTML element content and attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub(super) fn bytes(n: u64) -> String {
    bytesize::ByteSize::b(n).display().iec().to_string()
}

pub(super) fn time(secs: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    humantime::format_rfc3339_seconds(at).to_string()
}

/// A figure: `shown` for people, `value` exact in `data-value`.
fn figure(id: &str, value: impl std::fmt::Display, shown: &str) -> String {
    format!(
        r#"<span id="{}" data-value="{value}">{}</span>"#,
        esc(id),
        esc(shown)
    )
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.5em}\
table{border-collapse:collapse}td,th{padding:.2em .8em;border-bottom:1px solid #ddd;text-align:left}\
.big{font-size:1.8em;font-weight:600}.bad{color:#b00}.ok{color:#070}.muted{color:#777}\
.cards{display:flex;gap:2em;flex-wrap:wrap}";

/// The whole page for `snapshot`.
pub fn render_page(snapshot: &Snapshot) -> String {
    let mut html = String::with_capacity(16 * 1024);
    let _ = write!(
        html,
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="{REFRESH_SECS}"><link rel="icon" href="data:,"><title>pullthrough status</title><style>{STYLE}</style></head><body><h1>pullthrough</h1><p class="muted">as of {}</p>"#,
        time(snapshot.generated_at)
    );
    summary(&mut html, snapshot);
    chart(&mut html, snapshot);
    upstreams(&mut html, snapshot);
    cache(&mut html, snapshot);
    fleet(&mut html, snapshot);
    hottest(&mut html, snapshot);
    errors(&mut html, snapshot);
    html.push_str("</body></html>");
    html
}

fn summary(html: &mut String, s: &Snapshot) {
    let r = &s.requests;
    let ratio = r
        .hit_ratio
        .map_or("–".to_owned(), |h| format!("{:.1}%", h * 100.0));
    let ratio_value = r.hit_ratio.map_or("".to_owned(), |h| format!("{h:.6}"));
    let _ = write!(
        html,
        r#"<div class="cards"><div>hit ratio<div class="big">{}</div>{} of {} lookups</div><div>pulls saved<div class="big">{}</div>spent {}</div><div>downloads<div class="big">{}</div>{} clients streaming</div><div>requests<div class="big">{}</div>{} errors</div></div>"#,
        figure("hit-ratio", ratio_value, &ratio),
        figure("hits", r.hits, &r.hits.to_string()),
        figure("lookups", r.lookups, &r.lookups.to_string()),
        figure("pulls-saved", s.pulls.saved, &s.pulls.saved.to_string()),
        figure("pulls-spent", s.pulls.spent, &s.pulls.spent.to_string()),
        figure(
            "downloads-active",
            s.downloads.active,
            &s.downloads.active.to_string()
        ),
        figure(
            "download-clients",
            s.downloads.clients,
            &s.downloads.clients.to_string()
        ),
        figure("requests", r.total, &r.total.to_string()),
        figure("errors", r.errors, &r.errors.to_string()),
    );
    html.push_str("<h2>Hits and bytes served by tier</h2><table><tr><th>tier</th><th>hits</th><th>bytes served</th></tr>");
    for (tier, hits, served) in s.tiers() {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(tier),
            figure(&format!("hits-{tier}"), hits, &hits.to_string()),
            figure(&format!("served-{tier}"), served, &bytes(served)),
        );
    }
    html.push_str("</table>");
    let b = &s.blob_bytes;
    let share = b.bucket_share();
    let _ = write!(
        html,
        "<p>Blob bytes: {} sent by this replica, {} by the bucket through redirects ({} from the bucket).</p>",
        figure("blob-bytes-streamed", b.streamed, &bytes(b.streamed)),
        figure("blob-bytes-redirected", b.redirected, &bytes(b.redirected)),
        figure(
            "bucket-share",
            share.map_or(String::new(), |f| format!("{f:.6}")),
            &share.map_or("–".to_owned(), |f| format!("{:.1}%", f * 100.0))
        ),
    );
}

/// Lookups per interval as bars, hits over them, the hit ratio as a line.
fn chart(html: &mut String, s: &Snapshot) {
    let _ = write!(
        html,
        "<h2>Lookups and hits, every {} s</h2>",
        s.sample_every_secs
    );
    let (w, h) = (720.0_f64, 140.0_f64);
    let _ = write!(
        html,
        r##"<svg id="chart" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="lookups, hits and hit ratio over time"><rect width="{w}" height="{h}" fill="#fafafa" stroke="#ddd"/>"##
    );
    if s.history.is_empty() {
        let _ = write!(
            html,
            r##"<text x="10" y="20" fill="#777">collecting: the first point comes after {} s</text>"##,
            s.sample_every_secs * 2
        );
    }
    let max = s
        .history
        .iter()
        .map(|p| p.lookups)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let slot = w / s.history.len().max(1) as f64;
    let mut line = String::new();
    for (i, p) in s.history.iter().enumerate() {
        let x = i as f64 * slot;
        let lh = p.lookups as f64 / max * (h - 10.0);
        let hh = p.hits as f64 / max * (h - 10.0);
        let _ = write!(
            html,
            r##"<rect class="lookups" x="{x:.1}" y="{:.1}" width="{:.1}" height="{lh:.1}" fill="#c8d6e5"/><rect class="hits" x="{x:.1}" y="{:.1}" width="{:.1}" height="{hh:.1}" fill="#4a90d9"/>"##,
            h - lh,
            (slot - 1.0).max(1.0),
            h - hh,
            (slot - 1.0).max(1.0),
        );
        if p.lookups > 0 {
            let ratio = p.hits as f64 / p.lookups as f64;
            let (cx, cy) = (x + slot / 2.0, h - ratio * (h - 10.0));
            let _ = write!(line, "{cx:.1},{cy:.1} ");
            let _ = write!(
                html,
                r##"<circle class="ratio" cx="{cx:.1}" cy="{cy:.1}" r="3" fill="#2a7a2a"><title>{:.1}% of {} lookups</title></circle>"##,
                ratio * 100.0,
                p.lookups
            );
        }
    }
    if !line.is_empty() {
        let _ = write!(
            html,
            r##"<polyline points="{}" fill="none" stroke="#2a7a2a" stroke-width="2"/>"##,
            line.trim_end()
        );
    }
    html.push_str(r#"</svg><p class="muted">bars: lookups (light) and hits (dark); line: hit ratio (top = 100%)</p>"#);
}

fn upstreams(html: &mut String, s: &Snapshot) {
    html.push_str("<h2>Upstreams</h2><table><tr><th>upstream</th><th>pulls left</th><th>limit</th><th>resets</th><th>standing</th><th>circuit</th><th>pulls spent</th><th>pulls saved</th></tr>");
    for u in &s.upstreams {
        let n = &u.name;
        let opt = |v: Option<i64>| v.map_or("".to_owned(), |v| v.to_string());
        let shown = |v: Option<i64>| v.map_or("not announced".to_owned(), |v| v.to_string());
        let standing_class = if u.standing == "plenty" { "ok" } else { "bad" };
        let circuit_class = if u.circuit == "closed" { "ok" } else { "bad" };
        let _ = write!(
            html,
            r#"<tr data-upstream="{}"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class="{standing_class}">{}</td><td class="{circuit_class}">{}</td><td>{}</td><td>{}</td></tr>"#,
            esc(n),
            esc(n),
            figure(
                &format!("remaining-{n}"),
                opt(u.remaining),
                &shown(u.remaining)
            ),
            figure(&format!("limit-{n}"), opt(u.limit), &shown(u.limit)),
            u.resets_at.map_or("–".to_owned(), time),
            esc(&u.standing),
            esc(&u.circuit),
            figure(
                &format!("spent-{n}"),
                u.pulls_spent,
                &u.pulls_spent.to_string()
            ),
            figure(
                &format!("saved-{n}"),
                u.pulls_saved,
                &u.pulls_saved.to_string()
            ),
        );
    }
    html.push_str("</table>");
}

fn cache(html: &mut String, s: &Snapshot) {
    html.push_str("<h2>Cache</h2><table><tr><th>tier</th><th>size</th><th>objects</th><th>capacity</th><th>evictions</th><th>state</th></tr>");
    for t in &s.cache {
        let tier = &t.tier;
        let size = t.bytes.map_or_else(
            || {
                figure(
                    &format!("bytes-{tier}"),
                    "",
                    "unknown (see the bucket's metrics)",
                )
            },
            |b| figure(&format!("bytes-{tier}"), b, &bytes(b)),
        );
        let objects = t.objects.map_or_else(
            || figure(&format!("objects-{tier}"), "", "unknown"),
            |o| figure(&format!("objects-{tier}"), o, &o.to_string()),
        );
        let capacity = t
            .capacity_bytes
            .map_or("unbounded or unknown".to_owned(), bytes);
        let class = if t.state == "ok" { "ok" } else { "bad" };
        let _ = write!(
            html,
            r#"<tr><td>{}</td><td>{size}</td><td>{objects}</td><td>{}</td><td>{}</td><td class="{class}">{}</td></tr>"#,
            esc(tier),
            esc(&capacity),
            figure(
                &format!("evictions-{tier}"),
                t.evictions,
                &t.evictions.to_string()
            ),
            esc(&t.state),
        );
    }
    html.push_str("</table>");
}

fn fleet(html: &mut String, s: &Snapshot) {
    let Some(fleet) = &s.fleet else {
        return;
    };
    let _ = write!(
        html,
        r#"<h2>Fleet</h2><p class="muted">answered for peers {}, asked of owners {}, fetched here when the owner could not answer {}</p><table id="fleet"><tr><th>replica</th><th>state</th><th>why</th></tr>"#,
        figure(
            "peer-served",
            fleet.served_for_peers,
            &fleet.served_for_peers.to_string()
        ),
        figure(
            "peer-sent",
            fleet.sent_to_owners,
            &fleet.sent_to_owners.to_string()
        ),
        figure(
            "peer-fallbacks",
            fleet.fallbacks,
            &fleet.fallbacks.to_string()
        ),
    );
    for m in &fleet.members {
        let class = if m.state == "down" { "bad" } else { "ok" };
        let _ = write!(
            html,
            r#"<tr><td>{}</td><td class="{class}">{}</td><td class="muted">{}</td></tr>"#,
            esc(&m.url),
            esc(&m.state),
            esc(m.error.as_deref().unwrap_or("")),
        );
    }
    html.push_str("</table>");
}

fn hottest(html: &mut String, s: &Snapshot) {
    html.push_str(r#"<h2>Hottest images</h2><table id="hottest"><tr><th>image</th><th>manifest requests</th></tr>"#);
    if s.hottest.is_empty() {
        html.push_str(r#"<tr><td colspan="2" class="muted">none yet</td></tr>"#);
    }
    for image in &s.hottest {
        let _ = write!(
            html,
            r#"<tr><td class="image">{}</td><td data-value="{}">{}</td></tr>"#,
            esc(&image.image),
            image.requests,
            image.requests
        );
    }
    html.push_str("</table>");
}

fn errors(html: &mut String, s: &Snapshot) {
    html.push_str(r#"<h2>Recent errors</h2><table id="errors"><tr><th>time</th><th>request</th><th>status</th><th>code</th><th>message</th></tr>"#);
    if s.errors.is_empty() {
        html.push_str(r#"<tr><td colspan="5" class="muted">none</td></tr>"#);
    }
    for e in &s.errors {
        let _ = write!(
            html,
            r#"<tr class="error"><td>{}</td><td>{} {}</td><td>{}</td><td class="code">{}</td><td>{}</td></tr>"#,
            time(e.at),
            esc(&e.method),
            esc(&e.path),
            e.status,
            esc(&e.code),
            esc(&e.message),
        );
    }
    html.push_str("</table>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_requests_is_escaped() {
        assert_eq!(
            esc(r#"<script>"a"&'b'"#),
            "&lt;script&gt;&quot;a&quot;&amp;&#39;b&#39;"
        );
    }
}
