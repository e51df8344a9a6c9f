//! Where an S3 side's credentials come from, and resolving them once.

use aws_config::profile::ProfileFileCredentialsProvider;
use aws_config::provider_config::ProviderConfig;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{self, future, ProvideCredentials};
use aws_credential_types::Credentials;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_types::os_shim_internal::{Env, Fs};
use skyhaul_store::{cause_chain, Error, ErrorKind};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How long before they expire remembered credentials are resolved again: longer than the
/// SDK's own cache waits, so that it is never handed credentials it takes for expiring.
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(5 * 60);

/// A credentials provider that resolves once and hands the same credentials back until
/// [`REFRESH_BEFORE_EXPIRY`]. `S3Store::connect` resolves a side's credentials up front,
/// to fail with one clear line before any work, and so does a profile's check
/// ([`profile_credentials`]); the client's own cache resolves them again on its first
/// request. Behind this they are one resolution: one STS call for an assume-role profile,
/// one run of a `credential_process`.
#[derive(Debug, Clone)]
pub(crate) struct Remembered {
    inner: Arc<dyn ProvideCredentials>,
    /// Held across a resolution, so that requests that start together wait for one.
    last: Arc<tokio::sync::Mutex<Option<Credentials>>>,
}

impl Remembered {
    pub(crate) fn new(inner: impl ProvideCredentials + 'static) -> Self {
        Remembered {
            inner: Arc::new(inner),
            last: Arc::default(),
        }
    }

    async fn resolve(&self) -> provider::Result {
        let mut last = self.last.lock().await;
        let fresh = |c: &&Credentials| {
            c.expiry()
                .is_none_or(|at| at > SystemTime::now() + REFRESH_BEFORE_EXPIRY)
        };
        if let Some(known) = last.as_ref().filter(fresh) {
            return Ok(known.clone());
        }
        let resolved = self.inner.provide_credentials().await?;
        *last = Some(resolved.clone());
        Ok(resolved)
    }
}

impl ProvideCredentials for Remembered {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(self.resolve())
    }
}

/// The credentials of `profile`, when it gives some here. They come before the default
/// chain, whose first stop is `AWS_ACCESS_KEY_ID`: a cross-account copy must not run as the
/// environment's identity. A profile that gives none here (a region only, or a profile this
/// machine lacks, as on a fleet worker with an instance role) leaves the default chain to
/// find them, with a warning that says why. A profile that has a source of credentials
/// which fails (STS, a `credential_process`, SSO) is an error: taking another identity
/// because a sign-in failed once would copy as someone else. `region` is the side's:
/// assume-role profiles call STS, which needs one.
pub(crate) async fn profile_credentials(
    profile: &str,
    region: Option<aws_config::Region>,
    name: &str,
) -> Result<Option<Remembered>, Error> {
    let provider = ProfileFileCredentialsProvider::builder()
        .configure(&ProviderConfig::default().with_region(region))
        .profile_name(profile)
        .build();
    let provider = Remembered::new(provider);
    let e = match provider.provide_credentials().await {
        Ok(_) => return Ok(Some(provider)),
        Err(e) => e,
    };
    // The detail may quote a credential_process's output: -vv only, unless it is the
    // profile files' own account of what they lack.
    tracing::debug!("profile {profile}: {}", DisplayErrorContext(&e));
    let why = match &e {
        CredentialsError::CredentialsNotLoaded(_) if !names_credentials(profile).await => {
            tracing::warn!(
                "{name}: profile '{profile}' gives no credentials here (it is not in the AWS \
                 config files, or names no keys, role or source of credentials); using the \
                 environment or the instance's role"
            );
            return Ok(None);
        }
        // The SDK says "not loaded" of a profile that names a source it cannot use, too:
        // a `source_profile` that is not there, an SSO profile without its start URL.
        CredentialsError::CredentialsNotLoaded(_) | CredentialsError::InvalidConfiguration(_) => {
            cause_chain(&e)
        }
        CredentialsError::ProviderTimedOut(_) => "its source of credentials timed out".into(),
        _ => "its source of credentials failed (-vv shows how)".into(),
    };
    Err(Error::new(
        ErrorKind::AccessDenied,
        format!("{name}: profile '{profile}': no credentials: {why}"),
    ))
}

/// The settings by which a profile names a source of credentials.
const CREDENTIAL_SETTINGS: [&str; 11] = [
    "aws_access_key_id",
    "role_arn",
    "source_profile",
    "credential_source",
    "credential_process",
    "web_identity_token_file",
    "sso_session",
    "sso_start_url",
    "sso_account_id",
    "sso_role_name",
    "login_session",
];

/// Whether `profile` is in the AWS config files and names a source of credentials: then
/// failing to get them is an error, not a reason to look elsewhere. Files that cannot be
/// read or parsed count as naming one, so that their error is told.
async fn names_credentials(profile: &str) -> bool {
    let files = aws_runtime::env_config::file::EnvConfigFiles::default();
    let (fs, env) = (Fs::real(), Env::real());
    match aws_config::profile::load(&fs, &env, &files, None).await {
        Ok(set) => set
            .get_profile(profile)
            .is_some_and(|p| CREDENTIAL_SETTINGS.iter().any(|k| p.get(k).is_some())),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Counts its resolutions; its credentials expire `lifetime` after each.
    #[derive(Debug)]
    struct Counting {
        calls: Arc<AtomicU32>,
        lifetime: Option<Duration>,
    }

    impl ProvideCredentials for Counting {
        fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let expiry = self.lifetime.map(|l| SystemTime::now() + l);
            let creds = Credentials::new(format!("AKID{n}"), "secret", None, expiry, "test");
            future::ProvideCredentials::ready(Ok(creds))
        }
    }

    fn remembered(lifetime: Option<Duration>) -> (Remembered, Arc<AtomicU32>) {
        let calls = Arc::new(AtomicU32::new(0));
        let counting = Counting {
            calls: calls.clone(),
            lifetime,
        };
        (Remembered::new(counting), calls)
    }

    #[tokio::test]
    async fn credentials_are_resolved_once_while_they_last() {
        let (provider, calls) = remembered(Some(Duration::from_secs(3600)));
        let first = provider.provide_credentials().await.unwrap();
        let copy = provider.clone();
        let (a, b) = tokio::join!(provider.provide_credentials(), copy.provide_credentials());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(a.unwrap().access_key_id(), first.access_key_id());
        assert_eq!(b.unwrap().access_key_id(), "AKID0");

        let (forever, calls) = remembered(None);
        for _ in 0..3 {
            forever.provide_credentials().await.unwrap();
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "static keys never expire");
    }

    #[tokio::test]
    async fn credentials_about_to_expire_are_resolved_again() {
        let (provider, calls) = remembered(Some(REFRESH_BEFORE_EXPIRY / 2));
        let first = provider.provide_credentials().await.unwrap();
        let second = provider.provide_credentials().await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_ne!(first.access_key_id(), second.access_key_id());
    }
}
