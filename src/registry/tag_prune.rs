//! Keeps the tag records on disk bounded: when there are more than the
//! limit, the least recently used go, down to nine tenths of it.
//!
//! A record's file is rewritten on every check of its tag, and a tag in
//! use is checked at least once per TTL, so its mtime is its last use to
//! within a TTL; a dropped record costs one HEAD when its tag is next
//! pulled.

use std::io;
use std::path::Path;
use std::time::SystemTime;

/// Removes the least recently written `*.json` files of `dir` when there
/// are more than `max`, leaving nine tenths of `max`. Returns how many
/// went.
pub(super) fn prune(dir: &Path, max: u64) -> io::Result<usize> {
    let mut files: Vec<(SystemTime, std::path::PathBuf)> = Vec::new();
    for item in std::fs::read_dir(dir)? {
        let item = item?;
        let name = item.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        let modified = item.metadata()?.modified()?;
        files.push((modified, item.path()));
    }
    if files.len() as u64 <= max {
        return Ok(0);
    }
    let keep = (max - max / 10) as usize;
    let excess = files.len() - keep;
    files.select_nth_unstable_by_key(excess - 1, |(modified, _)| *modified);
    let mut removed = 0;
    for (_, path) in &files[..excess] {
        match std::fs::remove_file(path) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_least_recently_written_records_go_first() {
        let dir = tempfile::tempdir().unwrap();
        let start = SystemTime::now() - Duration::from_secs(3600);
        for n in 0..20u64 {
            let path = dir.path().join(format!("{n:02}.json"));
            std::fs::write(&path, b"{}").unwrap();
            let file = std::fs::File::options().write(true).open(&path).unwrap();
            file.set_modified(start + Duration::from_secs(n)).unwrap();
        }
        std::fs::write(dir.path().join(".00.json.123"), b"{}").unwrap();
        assert_eq!(prune(dir.path(), 25).unwrap(), 0, "under the limit");
        assert_eq!(prune(dir.path(), 10).unwrap(), 11, "down to nine tenths");
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut expected: Vec<String> = (11..20).map(|n| format!("{n:02}.json")).collect();
        expected.insert(0, ".00.json.123".into());
        assert_eq!(left, expected);
    }
}
