//! What `warm` reads of a manifest, and which entries of an index it
//! takes for the platforms asked.

use serde::Deserialize;

/// Which platforms of a multi-platform image to pull.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Platforms {
    /// `os/arch` or `os/arch/variant`.
    One(String),
    /// Every platform but attestations (`unknown/unknown`).
    All,
}

impl Platforms {
    /// This machine's platform, as `linux/amd64` or `linux/arm64`.
    pub fn host() -> Platforms {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platforms::One(format!("linux/{arch}"))
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct Descriptor {
    pub(super) digest: String,
    #[serde(default)]
    pub(super) size: u64,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Debug, Deserialize)]
struct Platform {
    os: String,
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

impl Platform {
    fn matches(&self, wanted: &str) -> bool {
        let mut parts = wanted.split('/');
        let (os, arch, variant) = (parts.next(), parts.next(), parts.next());
        os == Some(self.os.as_str())
            && arch == Some(self.architecture.as_str())
            && variant.is_none_or(|v| self.variant.as_deref() == Some(v))
    }

    fn name(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}/{}/{v}", self.os, self.architecture),
            None => format!("{}/{}", self.os, self.architecture),
        }
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct ManifestDoc {
    #[serde(default)]
    pub(super) manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    pub(super) config: Option<Descriptor>,
    #[serde(default)]
    pub(super) layers: Vec<Descriptor>,
}

/// The entries of an index that `platforms` asks for; an error naming
/// what the index offers when none fits.
pub(super) fn choose<'d>(
    entries: &'d [Descriptor],
    platforms: &Platforms,
) -> Result<Vec<&'d Descriptor>, String> {
    let chosen: Vec<&Descriptor> = entries
        .iter()
        .filter(|d| match (platforms, &d.platform) {
            (Platforms::All, Some(p)) => p.os != "unknown",
            (Platforms::All, None) => true,
            (Platforms::One(wanted), Some(p)) => p.matches(wanted),
            (Platforms::One(_), None) => false,
        })
        .collect();
    if chosen.is_empty() {
        let offered: Vec<String> = entries
            .iter()
            .filter_map(|d| d.platform.as_ref().map(Platform::name))
            .collect();
        let wanted = match platforms {
            Platforms::One(p) => p.as_str(),
            Platforms::All => "any platform",
        };
        return Err(format!(
            "no {wanted} in the index (it has {}); use --platform or --all-platforms",
            offered.join(", ")
        ));
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_match_with_or_without_variant() {
        let p = Platform {
            os: "linux".into(),
            architecture: "arm".into(),
            variant: Some("v7".into()),
        };
        assert!(p.matches("linux/arm"));
        assert!(p.matches("linux/arm/v7"));
        assert!(!p.matches("linux/arm/v6"));
        assert!(!p.matches("linux/arm64"));
    }

    #[test]
    fn an_index_without_the_platform_names_what_it_has() {
        let index: ManifestDoc = serde_json::from_str(
            r#"{"manifests":[
                {"digest":"sha256:a","size":1,"platform":{"os":"linux","architecture":"amd64"}},
                {"digest":"sha256:b","size":1,"platform":{"os":"unknown","architecture":"unknown"}}
            ]}"#,
        )
        .unwrap();
        let entries = index.manifests.unwrap();
        let all = choose(&entries, &Platforms::All).unwrap();
        assert_eq!(all.len(), 1, "attestations are not a platform");
        let missing = choose(&entries, &Platforms::One("linux/arm64".into())).unwrap_err();
        assert!(
            missing.contains("no linux/arm64 in the index (it has linux/amd64, unknown/unknown)"),
            "{missing}"
        );
    }
}
