//! The GCS and Azure Blob emulators, started per test like the S3 servers.
//!
//! - [`FakeGcsServer`]: fake-gcs-server 1.54 (Go), objects on disk. No XML multipart API; it
//!   recomputes hashes instead of checking the ones a client sends; no authentication.
//! - [`AzuriteServer`]: Azurite 3.37 (Node), the development account `devstoreaccount1` with its
//!   well-known key; checks Shared Key signatures; conditional create answers 409.
//!
//! Each has a client independent of skyhaul's own backend code (`object_store`'s stores) for
//! seeding and asserting: a test must not check skyhaul's results with the code under test.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::azure::{
    AzureAuthorizer, AzureCredential, MicrosoftAzure, MicrosoftAzureBuilder,
};
use object_store::client::{ClientOptions, HttpConnector, HttpRequestBody, ReqwestConnector};
use object_store::gcp::{GoogleCloudStorage, GoogleCloudStorageBuilder};
use tempfile::TempDir;

use crate::server::{answers_http, free_port};
use crate::tool;

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Azurite's development account and its published key (not a secret).
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// A child process on a port of 127.0.0.1, killed by PID and reaped on drop.
struct Process {
    child: Child,
    log_path: PathBuf,
    port: u16,
    // Dropped after the process is gone.
    _dir: TempDir,
}

impl Process {
    /// Starts `bin` with the arguments `args(port, data_dir)` returns and waits until the
    /// port answers HTTP; a process that exits during start-up (lost port race) is retried.
    fn start(name: &str, bin: &Path, args: impl Fn(u16, &Path) -> Vec<String>) -> Process {
        let mut last = String::new();
        for _attempt in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix(&format!("skyhaul-{name}-"))
                .tempdir()
                .expect("create temp dir for emulator");
            let data = dir.path().join("data");
            std::fs::create_dir(&data).expect("create emulator data dir");
            let log_path = dir.path().join("server.log");
            let log = std::fs::File::create(&log_path).expect("create emulator log");
            let port = free_port();
            let child = Command::new(bin)
                .args(args(port, &data))
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::from(log.try_clone().expect("dup log")))
                .stderr(Stdio::from(log))
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
            let mut p = Process {
                child,
                log_path,
                port,
                _dir: dir,
            };
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                if let Some(status) = p.child.try_wait().expect("try_wait emulator") {
                    last = format!(
                        "{name} exited during start-up ({status}) on port {port}; its output:\n{}",
                        p.log_tail()
                    );
                    break;
                }
                if answers_http(addr) {
                    return p;
                }
                if Instant::now() >= deadline {
                    panic!(
                        "{name} did not answer HTTP on {addr} within {START_TIMEOUT:?}; its output:\n{}",
                        p.log_tail()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("{last}");
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends one raw request (for set-up calls the independent stores do not offer) and panics
/// unless it succeeds.
async fn must_succeed(req: http::Request<HttpRequestBody>, what: &str) {
    let client = ReqwestConnector::default()
        .connect(&ClientOptions::new().with_allow_http(true))
        .expect("HTTP client");
    let resp = client
        .execute(req)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let status = resp.status();
    if !status.is_success() {
        let body = resp.into_body().bytes().await.unwrap_or_default();
        panic!("{what}: HTTP {status}: {}", String::from_utf8_lossy(&body));
    }
}

/// A running fake-gcs-server on 127.0.0.1, owned by the test.
/// `s` percent-encoded for a URL's path segment or query value.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub struct FakeGcsServer {
    /// `http://127.0.0.1:PORT`: the JSON API root, what `--src-endpoint` takes.
    pub endpoint: String,
    process: Process,
}

impl std::fmt::Debug for FakeGcsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeGcsServer")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl FakeGcsServer {
    /// Starts fake-gcs-server with its memory backend. Its file-system backend resolves `.`
    /// and `..` in object names and cannot hold names ending in `/`; GCS keeps names
    /// verbatim, and so does the memory backend.
    ///
    /// # Panics
    /// If it is not installed (`scripts/install-test-tools.sh`) or does not answer in 30 s.
    pub fn start() -> FakeGcsServer {
        let bin = tool("fake-gcs-server");
        let process = Process::start("fake-gcs-server", &bin, |port, _data| {
            let url = format!("http://127.0.0.1:{port}");
            [
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-port",
                &port.to_string(),
                "-backend",
                "memory",
                "-external-url",
                &url,
                "-public-host",
                &format!("127.0.0.1:{port}"),
                "-log-level",
                "error",
            ]
            .map(str::to_string)
            .to_vec()
        });
        FakeGcsServer {
            endpoint: format!("http://127.0.0.1:{}", process.port),
            process,
        }
    }

    /// Creates a bucket (the emulator takes no credentials).
    pub async fn create_bucket(&self, name: &str) {
        let req = http::Request::post(format!("{}/storage/v1/b", self.endpoint))
            .header("content-type", "application/json")
            .body(HttpRequestBody::from(
                serde_json::json!({ "name": name }).to_string(),
            ))
            .expect("request");
        must_succeed(req, &format!("fake-gcs-server: create bucket {name}")).await;
    }

    /// Uploads an object through the JSON API (`uploadType=media`). object_store's own
    /// upload goes through the XML API, where this emulator refuses bodies of several MiB.
    pub async fn put(&self, bucket: &str, key: &str, data: &[u8]) {
        let req = http::Request::post(format!(
            "{}/upload/storage/v1/b/{}/o?uploadType=media&name={}",
            self.endpoint,
            url_encode(bucket),
            url_encode(key)
        ))
        .header("content-type", "application/octet-stream")
        .body(HttpRequestBody::from(data.to_vec()))
        .expect("request");
        must_succeed(req, &format!("fake-gcs-server: put {bucket}/{key}")).await;
    }

    /// Uploads an object with user metadata (`uploadType=multipart`: the object resource,
    /// then the bytes), names as GCS allows them, which HTTP headers do not all carry.
    pub async fn put_with_metadata(
        &self,
        bucket: &str,
        key: &str,
        data: &[u8],
        metadata: &[(&str, &str)],
    ) {
        let metadata: serde_json::Map<String, serde_json::Value> = metadata
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect();
        let resource = serde_json::json!({ "name": key, "metadata": metadata });
        self.put_with_resource(bucket, key, data, resource).await;
    }

    /// Uploads an object with the object resource given (`name` included): content headers
    /// and metadata as GCS keeps them, which HTTP headers do not all carry.
    pub async fn put_with_resource(
        &self,
        bucket: &str,
        key: &str,
        data: &[u8],
        resource: serde_json::Value,
    ) {
        let boundary = "skyhaul-test-boundary";
        let mut body = format!(
            "--{boundary}\r\ncontent-type: application/json\r\n\r\n{resource}\r\n--{boundary}\r\n\
             content-type: application/octet-stream\r\n\r\n"
        )
        .into_bytes();
        body.extend_from_slice(data);
        body.extend_from_slice(format!("\r\n--{boundary}--").as_bytes());
        let req = http::Request::post(format!(
            "{}/upload/storage/v1/b/{}/o?uploadType=multipart",
            self.endpoint,
            url_encode(bucket)
        ))
        .header(
            "content-type",
            format!("multipart/related; boundary={boundary}"),
        )
        .body(HttpRequestBody::from(body))
        .expect("request");
        must_succeed(req, &format!("fake-gcs-server: put {bucket}/{key}")).await;
    }

    /// An independent client for `bucket` (object_store's GCS store, no OAuth).
    pub fn store(&self, bucket: &str) -> Arc<GoogleCloudStorage> {
        let key = serde_json::json!({
            "private_key": "", "private_key_id": "", "client_email": "",
            "disable_oauth": true, "gcs_base_url": self.endpoint,
        });
        Arc::new(
            GoogleCloudStorageBuilder::new()
                .with_bucket_name(bucket)
                .with_service_account_key(key.to_string())
                .with_client_options(ClientOptions::new().with_allow_http(true))
                .build()
                .expect("object_store GCS client for fake-gcs-server"),
        )
    }

    /// Environment giving the skyhaul CLI this server for one side (`"SRC"` or `"DST"`): its
    /// endpoint, which also means "no credentials".
    pub fn env_for(&self, side: &str) -> Vec<(String, String)> {
        vec![(format!("SKYHAUL_{side}_ENDPOINT"), self.endpoint.clone())]
    }

    /// The last 40 lines of the server's output, for failure messages.
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }
}

/// A running Azurite blob service on 127.0.0.1, owned by the test.
pub struct AzuriteServer {
    /// `http://127.0.0.1:PORT/devstoreaccount1`: the blob endpoint (path-style account).
    pub endpoint: String,
    pub account: String,
    pub key: String,
    process: Process,
}

impl std::fmt::Debug for AzuriteServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzuriteServer")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl AzuriteServer {
    /// Starts Azurite's blob service with its data in a temporary directory.
    ///
    /// # Panics
    /// If it is not installed (`scripts/install-test-tools.sh`) or does not answer in 30 s.
    pub fn start() -> AzuriteServer {
        let bin = tool("azurite-blob");
        let process = Process::start("azurite", &bin, |port, data| {
            [
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &port.to_string(),
                "--location",
                &data.to_string_lossy(),
                "--silent",
                "--disableTelemetry",
                "--skipApiVersionCheck",
            ]
            .map(str::to_string)
            .to_vec()
        });
        AzuriteServer {
            endpoint: format!("http://127.0.0.1:{}/{AZURITE_ACCOUNT}", process.port),
            account: AZURITE_ACCOUNT.to_string(),
            key: AZURITE_KEY.to_string(),
            process,
        }
    }

    /// A connection string for this server, as the Azure tools print it.
    pub fn connection_string(&self) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName={};AccountKey={};BlobEndpoint={};",
            self.account, self.key, self.endpoint
        )
    }

    /// An account SAS token (no leading `?`) for the blob service, all permissions on
    /// containers and objects, valid until 2099: what a user would paste from the portal.
    pub fn account_sas(&self) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let (sp, ss, srt, se, sv) = ("rwdlac", "b", "sco", "2099-01-01T00:00:00Z", "2020-12-06");
        // Account SAS string-to-sign for versions 2020-12-06 and later.
        let to_sign = format!("{}\n{sp}\n{ss}\n{srt}\n\n{se}\n\n\n{sv}\n\n", self.account);
        let key = ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            &b64.decode(&self.key).expect("Azurite's key is base64"),
        );
        let sig = b64.encode(ring::hmac::sign(&key, to_sign.as_bytes()).as_ref());
        let enc: String = sig
            .bytes()
            .map(|b| match b {
                b'+' => "%2B".to_string(),
                b'/' => "%2F".to_string(),
                b'=' => "%3D".to_string(),
                _ => (b as char).to_string(),
            })
            .collect();
        format!(
            "sv={sv}&ss={ss}&srt={srt}&sp={sp}&se={}&sig={enc}",
            se.replace(':', "%3A")
        )
    }

    /// Creates a container (Create Container, signed with the account key).
    pub async fn create_container(&self, name: &str) {
        self.put_container(name, None).await;
    }

    /// Creates a container that anyone may read unsigned, as open data sets on Azure are
    /// published: its blobs and their list at public access level `container`, its blobs
    /// only (each by name) at `blob`.
    pub async fn create_public_container(&self, name: &str, level: &str) {
        self.put_container(name, Some(level)).await;
    }

    async fn put_container(&self, name: &str, public_access: Option<&str>) {
        let mut req = http::Request::put(format!("{}/{name}?restype=container", self.endpoint))
            .header("content-length", "0");
        if let Some(level) = public_access {
            req = req.header("x-ms-blob-public-access", level);
        }
        let mut req = req.body(HttpRequestBody::empty()).expect("request");
        let cred = AzureCredential::AccessKey(
            object_store::azure::AzureAccessKey::try_new(&self.key).expect("key"),
        );
        AzureAuthorizer::new(&cred, &self.account)
            .try_authorize(&mut req)
            .expect("sign");
        must_succeed(req, &format!("azurite: create container {name}")).await;
    }

    /// An independent client for `container` (object_store's Azure store).
    pub fn store(&self, container: &str) -> Arc<MicrosoftAzure> {
        Arc::new(
            MicrosoftAzureBuilder::new()
                .with_account(&self.account)
                .with_access_key(&self.key)
                .with_container_name(container)
                .with_endpoint(self.endpoint.clone())
                .with_allow_http(true)
                .build()
                .expect("object_store Azure client for Azurite"),
        )
    }

    /// Environment giving the skyhaul CLI this server for one side: a connection string,
    /// which carries the endpoint, the account and its key.
    pub fn env_for(&self, side: &str) -> Vec<(String, String)> {
        vec![(
            format!("SKYHAUL_{side}_AZURE_CONNECTION_STRING"),
            self.connection_string(),
        )]
    }

    /// The last 40 lines of the server's output, for failure messages.
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }
}
