//! Real S3-compatible servers started per test.

use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, ObjectCannedAcl};
use aws_sdk_s3::Client;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use tempfile::TempDir;

use crate::tool;

/// How long [`S3Server::start`] waits for the server to answer HTTP. moto (Python) is the slowest
/// to start, typically 1-3 s on this machine.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Which real server to run. Each has different quirks, which is why tests run against several:
///
/// - [`S3Kind::S3sFs`]: s3s-fs (Rust), objects are files under the data dir; the fastest.
/// - [`S3Kind::RcloneServe`]: `rclone serve s3` over a local directory; ranged GET answers 200
///   with the whole-object checksum, ignores If-None-Match / If-Match, multipart ETag has no `-N`.
/// - [`S3Kind::Moto`]: moto's server (Python, in RAM); the only one honouring conditional writes
///   (412); slow and memory-hungry, so keep objects small.
/// - [`S3Kind::MotoSseKms`]: moto taught to behave as AWS does for a bucket that encrypts
///   every object with SSE-KMS (`moto_sse_kms.py`): each object's answers carry
///   `x-amz-server-side-encryption: aws:kms`, and its ETag is random, not the content's MD5,
///   though it has the same form. Not in [`S3Kind::ALL`]: the tests that need it name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum S3Kind {
    S3sFs,
    RcloneServe,
    Moto,
    MotoSseKms,
}

impl S3Kind {
    /// All kinds, for tests that loop over every server.
    pub const ALL: [S3Kind; 3] = [S3Kind::S3sFs, S3Kind::RcloneServe, S3Kind::Moto];
}

impl fmt::Display for S3Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            S3Kind::S3sFs => "s3s-fs",
            S3Kind::RcloneServe => "rclone-serve-s3",
            S3Kind::Moto => "moto",
            S3Kind::MotoSseKms => "moto-sse-kms",
        })
    }
}

/// A running S3-compatible server on `127.0.0.1`, owned by the test.
///
/// Each instance has its own port, random credentials and data directory (a [`TempDir`]), so tests
/// can run in parallel without seeing each other's buckets. The process is killed by PID and
/// reaped on drop; the data directory is deleted after it.
pub struct S3Server {
    pub kind: S3Kind,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    /// Always `us-east-1`: none of these servers cares, and it avoids LocationConstraint rules.
    pub region: String,
    /// Objects live under `data_dir/<bucket>/<key>` for s3s-fs and rclone (unused by moto).
    pub data_dir: PathBuf,
    child: Child,
    log_path: PathBuf,
    // Declared last: dropped after the process is gone.
    _dir: TempDir,
}

impl fmt::Debug for S3Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Server")
            .field("kind", &self.kind)
            .field("endpoint", &self.endpoint)
            .field("pid", &self.child.id())
            .finish_non_exhaustive()
    }
}

impl S3Server {
    /// Starts a server of `kind` on a free port of 127.0.0.1 and waits until it answers HTTP.
    ///
    /// A free port is found by binding port 0 and releasing it, which can race with another test;
    /// so if the server exits during start-up it is retried on a new port (3 attempts).
    ///
    /// # Panics
    /// If the tool is not installed, or the server does not answer within 20 s; the message has the
    /// tail of the server's output.
    pub fn start(kind: S3Kind) -> S3Server {
        Self::start_in(kind, None)
    }

    /// Like [`S3Server::start`], but inside the network namespace `netns` (on its own
    /// loopback): reachable only from processes in that namespace. Set-up and checks then go
    /// through [`crate::netns::Region::block_on`].
    pub fn start_in(kind: S3Kind, netns: Option<&str>) -> S3Server {
        let bin = tool(match kind {
            S3Kind::S3sFs => "s3s-fs",
            S3Kind::RcloneServe => "rclone",
            S3Kind::Moto => "moto_server",
            // The Python of moto's environment, to run the wrapper that patches it.
            S3Kind::MotoSseKms => "moto-python",
        });
        let mut last_err = String::new();
        for _attempt in 0..3 {
            match Self::try_start(kind, &bin, netns) {
                Ok(server) => return server,
                Err(StartError::Exited(msg)) => last_err = msg,
                Err(StartError::Timeout(msg)) => panic!("{msg}"),
            }
        }
        panic!("{last_err}");
    }

    fn try_start(kind: S3Kind, bin: &Path, netns: Option<&str>) -> Result<S3Server, StartError> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("skyhaul-{kind}-"))
            .tempdir()
            .expect("create temp dir for S3 server");
        let data_dir = dir.path().join("data");
        std::fs::create_dir(&data_dir).expect("create server data dir");
        let log_path = dir.path().join("server.log");
        let port = match netns {
            Some(ns) => crate::netns::in_netns(ns, free_port),
            None => free_port(),
        };
        let access_key = format!("AK{:016x}", rand::random::<u64>());
        let secret_key = format!("SK{:032x}", rand::random::<u128>());

        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        match kind {
            S3Kind::S3sFs => {
                cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
                    .args(["--access-key", &access_key, "--secret-key", &secret_key])
                    .arg(&data_dir);
            }
            S3Kind::RcloneServe => {
                // An empty config file: never read the developer's rclone remotes or settings.
                let config = dir.path().join("rclone.conf");
                std::fs::write(&config, "").expect("write empty rclone.conf");
                cmd.env("RCLONE_CONFIG", &config)
                    .args(["serve", "s3", "--addr", &format!("127.0.0.1:{port}")])
                    .args(["--auth-key", &format!("{access_key},{secret_key}")])
                    .args(["--vfs-cache-mode", "off"])
                    .arg("--cache-dir")
                    .arg(dir.path().join("rclone-cache"))
                    .arg(&data_dir);
            }
            S3Kind::Moto => {
                // moto keeps everything in RAM and accepts any credentials.
                cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
            }
            S3Kind::MotoSseKms => {
                // The wrapper patches moto, then runs its server with these arguments.
                let script = dir.path().join("moto_sse_kms.py");
                std::fs::write(&script, include_str!("moto_sse_kms.py"))
                    .expect("write moto_sse_kms.py");
                cmd.arg(&script)
                    .args(["-H", "127.0.0.1", "-p", &port.to_string()]);
            }
        }
        let log = std::fs::File::create(&log_path).expect("create server log");
        let log2 = log.try_clone().expect("dup server log");
        cmd.current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));

        let mut server = S3Server {
            kind,
            endpoint: format!("http://127.0.0.1:{port}"),
            access_key,
            secret_key,
            region: "us-east-1".to_string(),
            data_dir,
            child,
            log_path,
            _dir: dir,
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = server.child.try_wait().expect("try_wait server") {
                return Err(StartError::Exited(format!(
                    "{kind} server exited during start-up ({status}) on port {port}; its output:\n{}",
                    server.log_tail()
                )));
            }
            let up = match netns {
                Some(ns) => crate::netns::in_netns(ns, || answers_http(addr)),
                None => answers_http(addr),
            };
            if up {
                return Ok(server);
            }
            if Instant::now() >= deadline {
                // `server` is dropped here: the process is killed.
                return Err(StartError::Timeout(format!(
                    "{kind} server did not answer HTTP on {addr} within {START_TIMEOUT:?}; its output:\n{}",
                    server.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last 40 lines of the server's stdout+stderr, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The server's process id (for tests that want to kill or stop it mid-transfer).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An SDK config builder preset for this server: endpoint, path-style addressing, static
    /// credentials, region `us-east-1`, checksums only when required (several of these servers
    /// reject or mis-echo the checksums the SDK sends by default) and standard retries.
    ///
    /// Override what a test needs before building, e.g. point it at a
    /// [`FaultProxy`](crate::FaultProxy) with `.endpoint_url(proxy.endpoint())` or turn retries off
    /// with `.retry_config(RetryConfig::disabled())`.
    pub fn sdk_config(&self) -> aws_sdk_s3::config::Builder {
        aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .region(Region::new(self.region.clone()))
            .credentials_provider(Credentials::new(
                &self.access_key,
                &self.secret_key,
                None,
                None,
                "skyhaul-testkit",
            ))
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
    }

    /// An SDK client independent of skyhaul, for seeding and asserting: a test must not check
    /// skyhaul's results with skyhaul's own S3 code. Built from [`S3Server::sdk_config`].
    ///
    /// A new client (and connection pool) each call, so it is safe to use from any tokio runtime.
    pub async fn client(&self) -> Client {
        Client::from_conf(self.sdk_config().build())
    }

    /// Creates a bucket. Panics on failure (these helpers are for test set-up).
    pub async fn create_bucket(&self, name: &str) {
        let res = self
            .client()
            .await
            .create_bucket()
            .bucket(name)
            .send()
            .await;
        if let Err(e) = res {
            panic!(
                "{}: create bucket {name}: {}",
                self.kind,
                DisplayErrorContext(&e)
            );
        }
    }

    /// Uploads an object with a single PutObject.
    pub async fn put(&self, bucket: &str, key: &str, data: &[u8]) {
        self.put_object(bucket, key, data, None, false).await
    }

    /// Uploads an object anyone may read, unsigned (canned ACL `public-read`), as open data
    /// on S3 is published. moto then serves unsigned reads of it, and refuses them of the
    /// objects uploaded with [`S3Server::put`], as S3 does.
    pub async fn put_public(&self, bucket: &str, key: &str, data: &[u8]) {
        self.put_object(bucket, key, data, None, true).await
    }

    /// Uploads an object with a single PutObject that sends its checksum by `algorithm`
    /// (`CRC32`, `CRC32C`, `CRC64NVME`…), as AWS's SDKs do by default since 2025 (CRC32): the
    /// server keeps it with the object and reports it to reads that ask
    /// (`x-amz-checksum-mode`).
    pub async fn put_with_checksum(&self, bucket: &str, key: &str, data: &[u8], algorithm: &str) {
        self.put_object(bucket, key, data, Some(algorithm), false)
            .await
    }

    async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        data: &[u8],
        algorithm: Option<&str>,
        public: bool,
    ) {
        let res = self
            .client()
            .await
            .put_object()
            .bucket(bucket)
            .key(key)
            .set_checksum_algorithm(algorithm.map(Into::into))
            .set_acl(public.then_some(ObjectCannedAcl::PublicRead))
            .body(ByteStream::from(data.to_vec()))
            .send()
            .await;
        if let Err(e) = res {
            panic!(
                "{}: put {bucket}/{key}: {}",
                self.kind,
                DisplayErrorContext(&e)
            );
        }
    }

    /// Downloads an object: `None` if it does not exist (404), panics on any other error.
    pub async fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let res = self
            .client()
            .await
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await;
        match res {
            Ok(out) => {
                let body =
                    out.body.collect().await.unwrap_or_else(|e| {
                        panic!("{}: read body of {bucket}/{key}: {e}", self.kind)
                    });
                Some(body.into_bytes().to_vec())
            }
            Err(e) if e.raw_response().map(|r| r.status().as_u16()) == Some(404) => None,
            Err(e) => panic!(
                "{}: get {bucket}/{key}: {}",
                self.kind,
                DisplayErrorContext(&e)
            ),
        }
    }

    /// Lists every object under `prefix` (all pages of ListObjectsV2) as `(key, size)`, sorted by
    /// key.
    pub async fn list(&self, bucket: &str, prefix: &str) -> Vec<(String, u64)> {
        let client = self.client().await;
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let res = client
                .list_objects_v2()
                .bucket(bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "{}: list {bucket}/{prefix}: {}",
                        self.kind,
                        DisplayErrorContext(&e)
                    )
                });
            for obj in res.contents() {
                let key = obj.key().unwrap_or_default().to_string();
                let size = obj.size().unwrap_or_default().max(0) as u64;
                out.push((key, size));
            }
            match res.next_continuation_token() {
                Some(t) if res.is_truncated() == Some(true) && !t.is_empty() => {
                    token = Some(t.to_string())
                }
                _ => break,
            }
        }
        out.sort();
        out
    }

    /// Starts a multipart upload and returns its upload id, e.g. to leave an orphaned upload behind
    /// for cleanup tests.
    ///
    /// rclone serve s3 (1.75) names the response's root element `InitiateMultipartUpload` instead
    /// of `InitiateMultipartUploadResult`, which the Rust SDK refuses to parse; the upload id is
    /// then taken from the raw 200 response.
    pub async fn create_multipart_upload(&self, bucket: &str, key: &str) -> String {
        let res = self
            .client()
            .await
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .send()
            .await;
        match res {
            Ok(out) => out.upload_id().expect("upload id in response").to_string(),
            Err(e) => skyhaul_s3::upload_id_from_unparsed_reply(&e).unwrap_or_else(|| {
                panic!(
                    "{}: create multipart upload {bucket}/{key}: {}",
                    self.kind,
                    DisplayErrorContext(&e)
                )
            }),
        }
    }

    /// Uploads an object with CreateMultipartUpload / UploadPart / CompleteMultipartUpload, as
    /// another client (aws cli, rclone…) would, so tests get objects whose ETag is not an MD5.
    /// `part_size` must be at least 5 MiB except with a single part (moto enforces S3's minimum).
    pub async fn put_multipart(&self, bucket: &str, key: &str, data: &[u8], part_size: usize) {
        assert!(part_size > 0, "part_size must be > 0");
        let client = self.client().await;
        let ctx = |what: &str, e: &dyn std::error::Error| {
            format!(
                "{}: multipart {what} {bucket}/{key}: {}",
                self.kind,
                DisplayErrorContext(e)
            )
        };
        let upload_id = self.create_multipart_upload(bucket, key).await;
        let mut parts = Vec::new();
        let chunks: Vec<&[u8]> = if data.is_empty() {
            vec![data]
        } else {
            data.chunks(part_size).collect()
        };
        for (i, chunk) in chunks.into_iter().enumerate() {
            let n = i as i32 + 1;
            let out = client
                .upload_part()
                .bucket(bucket)
                .key(key)
                .upload_id(&upload_id)
                .part_number(n)
                .body(ByteStream::from(chunk.to_vec()))
                .send()
                .await
                .unwrap_or_else(|e| panic!("{}", ctx(&format!("upload part {n}"), &e)));
            parts.push(
                CompletedPart::builder()
                    .part_number(n)
                    .set_e_tag(out.e_tag().map(str::to_string))
                    .build(),
            );
        }
        client
            .complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}", ctx("complete", &e)));
    }

    /// Multipart uploads in progress in `bucket` as `(key, upload id)`, all pages, sorted; for
    /// asserting that an aborted or resumed transfer leaves no orphaned uploads behind.
    pub async fn list_multipart_uploads(&self, bucket: &str) -> Vec<(String, String)> {
        let client = self.client().await;
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
        loop {
            let res = client
                .list_multipart_uploads()
                .bucket(bucket)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await;
            let res = match res {
                Ok(res) => res,
                Err(e) if self.kind == S3Kind::S3sFs && e.code() == Some("NotImplemented") => {
                    return self.s3s_fs_multipart_uploads(bucket);
                }
                Err(e) => panic!(
                    "{}: list multipart uploads {bucket}: {}",
                    self.kind,
                    DisplayErrorContext(&e)
                ),
            };
            for u in res.uploads() {
                out.push((
                    u.key().unwrap_or_default().to_string(),
                    u.upload_id().unwrap_or_default().to_string(),
                ));
            }
            if res.is_truncated() != Some(true) {
                break;
            }
            key_marker = res.next_key_marker().map(str::to_string);
            id_marker = res.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() && id_marker.is_none() {
                break;
            }
        }
        out.sort();
        out
    }

    /// s3s-fs 0.14 answers ListMultipartUploads with 501 NotImplemented, so read its on-disk
    /// state instead: an upload in progress is `ROOT/.upload-<id>.json` plus
    /// `ROOT/.bucket-<b64 bucket>.object-<b64 key>.upload-<id>.metadata.json` (URL-safe base64,
    /// no padding); both are removed on complete and abort.
    fn s3s_fs_multipart_uploads(&self, bucket: &str) -> Vec<(String, String)> {
        let prefix = format!(".bucket-{}.object-", URL_SAFE_NO_PAD.encode(bucket));
        let mut out = Vec::new();
        let entries = std::fs::read_dir(&self.data_dir).expect("read s3s-fs data dir");
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name
                .strip_prefix(&prefix)
                .and_then(|r| r.strip_suffix(".metadata.json"))
            else {
                continue;
            };
            let Some((key_b64, id)) = rest.split_once(".upload-") else {
                continue;
            };
            if !self.data_dir.join(format!(".upload-{id}.json")).exists() {
                continue;
            }
            if let Ok(key) = URL_SAFE_NO_PAD.decode(key_b64) {
                out.push((String::from_utf8_lossy(&key).into_owned(), id.to_string()));
            }
        }
        out.sort();
        out
    }

    /// Environment variables giving the skyhaul CLI this server's credentials for one side of a
    /// transfer: `side` is `"SRC"` or `"DST"`, e.g. `SKYHAUL_SRC_ACCESS_KEY_ID`,
    /// `SKYHAUL_SRC_SECRET_ACCESS_KEY`. Credentials travel by environment, not argv, as a user's
    /// would.
    pub fn env_for(&self, side: &str) -> Vec<(String, String)> {
        vec![
            (
                format!("SKYHAUL_{side}_ACCESS_KEY_ID"),
                self.access_key.clone(),
            ),
            (
                format!("SKYHAUL_{side}_SECRET_ACCESS_KEY"),
                self.secret_key.clone(),
            ),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        // SIGKILL by PID, then reap so no zombie is left; errors mean it is already gone.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

enum StartError {
    /// The process exited (maybe lost the port race): worth retrying.
    Exited(String),
    /// It runs but does not answer: retrying would only double the wait.
    Timeout(String),
}

/// A port that was free a moment ago (bind port 0 on 127.0.0.1 and release it).
pub(crate) fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// True if something on `addr` answers an HTTP request with an HTTP status line (any status: an
/// unauthenticated request gets 403 from most of these servers, which still proves it is up).
pub(crate) fn answers_http(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).is_ok() && &buf == b"HTTP/"
}
