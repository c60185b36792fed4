//! Headless Chromium (Debian's `chromium` package, installed by
//! `tests/run`), started once per page load with a fresh profile: the DOM
//! after load, and screenshots.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::process::run_to_end;
use super::registry::require;

/// The flags every run needs: no sandbox (tests may run as root), no
/// GPU, and nothing that reaches the network beyond the page itself.
fn command(profile: &Path) -> Command {
    let mut command = Command::new(require("chromium"));
    command.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
    ]);
    command.arg(format!("--user-data-dir={}", profile.display()));
    command
}

/// The DOM of `url` after it loaded, serialized.
pub async fn dump_dom(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut command = command(profile.path());
    command.args(["--dump-dom", url]);
    let output = run_to_end(command, Duration::from_secs(90)).await;
    assert!(
        output.status.success(),
        "chromium --dump-dom failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("the DOM is UTF-8")
}

/// Saves a 1280x1024 screenshot of `url` as the PNG `path`.
pub async fn screenshot(url: &str, path: &Path) {
    let profile = tempfile::tempdir().unwrap();
    let mut command = command(profile.path());
    command
        .arg(format!("--screenshot={}", path.display()))
        .args(["--window-size=1280,1024", url]);
    let output = run_to_end(command, Duration::from_secs(90)).await;
    assert!(
        output.status.success() && path.is_file(),
        "chromium --screenshot failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The `data-value` of the element with `id`, as the page rendered it.
pub fn data_value(dom: &str, id: &str) -> Option<String> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let tag_end = at + dom[at..].find('>')?;
    let tag = &dom[at..tag_end];
    let start = tag.find("data-value=\"")? + "data-value=\"".len();
    let len = tag[start..].find('"')?;
    Some(tag[start..start + len].to_owned())
}
