//! The effective configuration as TOML, for `pullthrough config`: the same
//! file format `--config` reads, with every credential redacted, so the
//! output can be saved, edited and fed back.

use super::Config;

impl Config {
    /// The configuration as a TOML document that [`Config::from_toml`]
    /// accepts again; durations print in `humantime` form, sizes in
    /// `bytesize` form, credentials as [`Secret::REDACTED`](super::Secret::REDACTED).
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }
}

/// Writes a size in the largest binary unit that holds it exactly
/// (`"20GiB"`, `"640KiB"`), else in bytes: `bytesize`'s own form rounds to
/// one decimal, which would not read back as the same size.
pub(super) fn exact_size<S: serde::Serializer>(
    size: &bytesize::ByteSize,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let bytes = size.as_u64();
    let unit = [
        ("TiB", 1u64 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ]
    .into_iter()
    .find(|(_, unit)| bytes > 0 && bytes.is_multiple_of(*unit));
    match unit {
        Some((name, unit)) => serializer.serialize_str(&format!("{}{name}", bytes / unit)),
        None => serializer.serialize_str(&format!("{bytes}B")),
    }
}

/// [`exact_size`] for an optional size (`None` is left out of the file).
pub(super) fn exact_size_opt<S: serde::Serializer>(
    size: &Option<bytesize::ByteSize>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match size {
        Some(size) => exact_size(size, serializer),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytesize::ByteSize;

    use super::super::{Overrides, Secret, UpstreamConfig};
    use super::*;

    /// A configuration that sets something in every section.
    fn busy_config() -> Config {
        let mut c = Config {
            tag_ttl: Duration::from_secs(90),
            ..Config::default()
        };
        c.memory.max_bytes = ByteSize::mib(64);
        c.disk.max_bytes = Some(ByteSize::gib(20));
        c.disk.max_percent = 90;
        c.timeouts.read = Duration::from_millis(2500);
        c.s3.bucket = "cache-bucket".into();
        c.s3.region = Some("eu-west-1".into());
        c.s3.read_part_size = ByteSize::kib(640);
        c.memory.max_object_bytes = ByteSize::b(1_234_567);
        let mut local = UpstreamConfig::new("http://10.0.0.5:5000");
        local.tag_ttl = Some(Duration::from_secs(3600));
        local.username = Some("robot".into());
        local.password = Some(Secret::new("hunter2"));
        c.upstreams.insert("registry.local:5000".into(), local);
        c.upstreams.get_mut("quay.io").unwrap().enabled = false;
        c
    }

    #[test]
    fn printed_config_is_read_back_unchanged_but_for_credentials() {
        let config = busy_config();
        config.validate().unwrap();
        let text = config.to_toml().unwrap();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("password = \"<redacted>\""), "{text}");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("printed.toml");
        std::fs::write(&file, &text).unwrap();
        let back = Config::load(Some(&file), Overrides::default(), |_| None).unwrap();
        assert_eq!(back.to_toml().unwrap(), text, "a second print is the same");
        assert_eq!(back.tag_ttl, config.tag_ttl);
        assert_eq!(back.timeouts.read, config.timeouts.read);
        assert_eq!(back.memory.max_bytes, config.memory.max_bytes);
        assert_eq!(back.disk.max_bytes, config.disk.max_bytes);
        assert_eq!(back.s3.read_part_size, config.s3.read_part_size);
        assert_eq!(back.memory.max_object_bytes, ByteSize::b(1_234_567));
        assert!(text.contains("max_bytes = \"20GiB\""), "{text}");
        assert_eq!(back.upstreams.len(), config.upstreams.len());
        let local = &back.upstreams["registry.local:5000"];
        assert_eq!(local.tag_ttl, Some(Duration::from_secs(3600)));
        assert_eq!(local.password.as_ref().unwrap().expose(), Secret::REDACTED);
        assert!(!back.upstreams["quay.io"].enabled);
    }

    #[test]
    fn the_default_prints_and_reads_back() {
        let text = Config::default().to_toml().unwrap();
        let back = Config::from_toml(&text).unwrap();
        back.validate().unwrap();
        assert_eq!(back.to_toml().unwrap(), text);
        assert!(!text.contains("max_bytes = \"0"), "{text}");
    }
}
