//! A worker's HTTP client for its coordinator: the bearer token on every request, and
//! patience when the coordinator is away (restarting, or not up yet).

use crate::auth::Token;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// 401/403: the token is wrong. Retrying cannot help.
    #[error("the coordinator at {0} refused the token (401): check SKYHAUL_FLEET_TOKEN / --token")]
    Unauthorized(String),
    /// The coordinator's TLS certificate is not trusted here. Retrying cannot help.
    #[error("the coordinator at {url} presented a certificate this worker does not trust ({detail}): pass its CA with --tls-ca")]
    Untrusted { url: String, detail: String },
    /// Not answering within the patience given.
    #[error("the coordinator at {url} did not answer for {secs} s: {last}")]
    Unreachable {
        url: String,
        secs: u64,
        last: String,
    },
    /// The coordinator at the address runs another transfer than the one this worker
    /// joined (it was restarted with another command). Retrying cannot help.
    #[error("the coordinator at {url} now runs another transfer ({detail}): this worker leaves; start it again to work for that one")]
    OtherTransfer { url: String, detail: String },
    /// Answered, but not with what the protocol says (another version, a proxy page).
    #[error("the coordinator at {url} answered {path} with {detail}")]
    Protocol {
        url: String,
        path: String,
        detail: String,
    },
}

pub struct Client {
    base: String,
    token: Token,
    http: reqwest::Client,
    /// How long to keep retrying a request the coordinator does not answer.
    patience: Duration,
}

impl Client {
    /// A client for the coordinator at `base`; `ca` are trusted besides the system's roots.
    pub fn new(
        base: &str,
        token: Token,
        patience: Duration,
        ca: Vec<reqwest::Certificate>,
    ) -> Result<Client, String> {
        let url = reqwest::Url::parse(base)
            .map_err(|e| format!("--coordinator {base}: not a URL ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("--coordinator {base}: use http:// or https://"));
        }
        let http = reqwest::Client::builder()
            .tls_certs_merge(ca)
            .timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            token,
            http,
            patience,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(path, None::<&()>).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.call(path, Some(body)).await
    }

    /// One request, retried with backoff on connection errors and 5xx until `patience`
    /// has passed without an answer.
    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let start = Instant::now();
        let mut delay = Duration::from_millis(100);
        loop {
            let req = match body {
                Some(b) => self.http.post(&url).json(b),
                None => self.http.get(&url),
            };
            let last = match req.bearer_auth(self.token.expose()).send().await {
                Ok(r) if r.status().is_success() => {
                    return r.json::<T>().await.map_err(|e| ClientError::Protocol {
                        url: self.base.clone(),
                        path: path.to_string(),
                        detail: format!("a body that is not the expected JSON ({e})"),
                    })
                }
                Ok(r) if matches!(r.status().as_u16(), 401 | 403) => {
                    return Err(ClientError::Unauthorized(self.base.clone()))
                }
                Ok(r) if r.status() == reqwest::StatusCode::CONFLICT => {
                    return Err(ClientError::OtherTransfer {
                        url: self.base.clone(),
                        detail: r.text().await.unwrap_or_default(),
                    })
                }
                Ok(r) if r.status().is_server_error() => format!("HTTP {}", r.status()),
                Ok(r) => {
                    return Err(ClientError::Protocol {
                        url: self.base.clone(),
                        path: path.to_string(),
                        detail: format!("HTTP {}", r.status()),
                    })
                }
                Err(e) if skyhaul_tls::untrusted(&e).is_some() => {
                    let detail = skyhaul_tls::untrusted(&e).unwrap_or_default();
                    return Err(ClientError::Untrusted {
                        url: self.base.clone(),
                        detail,
                    });
                }
                // reqwest's errors name the URL but never the headers: no token in here.
                Err(e) => without_url(&e),
            };
            if start.elapsed() >= self.patience {
                return Err(ClientError::Unreachable {
                    url: self.base.clone(),
                    secs: self.patience.as_secs(),
                    last,
                });
            }
            tracing::debug!("coordinator {}{path}: {last}; retrying", self.base);
            let jitter = Duration::from_millis(rand::random::<u64>() % 100);
            tokio::time::sleep(delay + jitter).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
}

/// A transport error's kind and causes, without the URL (the message names the coordinator).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = if e.is_connect() {
        "connection failed".to_string()
    } else if e.is_timeout() {
        "timed out".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}
