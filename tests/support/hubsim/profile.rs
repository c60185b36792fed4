//! Per-registry profiles: [`SimOptions`] that make the simulator play one
//! of pullthrough's built-in upstreams, with the token realm where that
//! registry keeps it, its blob redirect status, and whether it asks for
//! authentication at all. The facts and their sources are in
//! `docs/registries.md`.

use super::SimOptions;

/// Where the simulator's tokens come from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SimAuth {
    /// A realm on its own host ([`HubSim::realm_url`](super::HubSim::realm_url)
    /// `/token`), as Docker Hub's `auth.docker.io`.
    #[default]
    RealmHost,
    /// A realm on the registry's own host at this path, such as ghcr.io's
    /// `/token` or quay.io's `/v2/auth`.
    OwnHost(&'static str),
    /// No authentication at all: every request is answered as it comes.
    None,
}

/// The built-in upstreams the simulator can play.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    DockerHub,
    K8s,
    Ghcr,
    Quay,
    Gcr,
    Ecr,
    Mcr,
}

/// The repository prefix registry.k8s.io's redirects add.
pub const K8S_PREFIX: &str = "k8s-artifacts-prod/images";

impl Profile {
    /// Every profile, for table-driven tests.
    pub const ALL: [Profile; 7] = [
        Profile::DockerHub,
        Profile::K8s,
        Profile::Ghcr,
        Profile::Quay,
        Profile::Gcr,
        Profile::Ecr,
        Profile::Mcr,
    ];

    /// The built-in upstream name pullthrough knows the registry by.
    pub fn upstream(self) -> &'static str {
        match self {
            Profile::DockerHub => "docker.io",
            Profile::K8s => "registry.k8s.io",
            Profile::Ghcr => "ghcr.io",
            Profile::Quay => "quay.io",
            Profile::Gcr => "gcr.io",
            Profile::Ecr => "public.ecr.aws",
            Profile::Mcr => "mcr.microsoft.com",
        }
    }

    /// The simulator options that play this registry.
    pub fn options(self) -> SimOptions {
        let (auth, blob_redirect, front_prefix) = match self {
            Profile::DockerHub => (SimAuth::RealmHost, 307, None),
            // The registry behind the front is Artifact Registry, whose
            // realm is `/v2/token` on its own host.
            Profile::K8s => (SimAuth::OwnHost("/v2/token"), 307, Some(K8S_PREFIX)),
            Profile::Ghcr => (SimAuth::OwnHost("/token"), 307, None),
            Profile::Quay => (SimAuth::OwnHost("/v2/auth"), 302, None),
            Profile::Gcr => (SimAuth::OwnHost("/v2/token"), 302, None),
            Profile::Ecr => (SimAuth::OwnHost("/token"), 307, None),
            Profile::Mcr => (SimAuth::None, 307, None),
        };
        SimOptions {
            auth,
            blob_redirect: Some(blob_redirect),
            front_prefix: front_prefix.map(str::to_owned),
            ..SimOptions::default()
        }
    }
}
