//! Running the real `skyhaul` binary against real servers, and comparing trees.

#![allow(dead_code)]

use skyhaul_testkit::S3Server;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Output;

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Run {
    /// The last line of `--json` output: the `done` event, which holds the whole report
    /// (or the verification).
    pub fn json(&self) -> serde_json::Value {
        last_json_line(&self.stdout).unwrap_or_else(|e| panic!("{e}\nstderr: {}", self.stderr))
    }

    /// Every line of `--json` output, parsed.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {l}\nstderr: {}", self.stderr))
            })
            .collect()
    }
}

/// The last line of `stdout` as JSON.
pub fn last_json_line(stdout: &str) -> Result<serde_json::Value, String> {
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    serde_json::from_str(last).map_err(|e| format!("not JSON ({e}): {stdout}"))
}

/// Runs `skyhaul ARGS` with credentials for each given side and a clean environment.
pub fn skyhaul(args: &[&str], src: Option<&S3Server>, dst: Option<&S3Server>) -> Run {
    skyhaul_env(args, src, dst, &[])
}

/// The settings the environment could change, removed so that tests see the defaults (and
/// `--help`, which shows the variables, reads the same everywhere).
const SETTINGS_ENV: [&str; 20] = [
    "SKYHAUL_REQUESTER_PAYS",
    "SKYHAUL_SRC_ANONYMOUS",
    "SKYHAUL_RELAY",
    "SKYHAUL_RELAY_KEY",
    "SKYHAUL_SRC_ENDPOINT",
    "SKYHAUL_DST_ENDPOINT",
    "SKYHAUL_SRC_PROFILE",
    "SKYHAUL_DST_PROFILE",
    "SKYHAUL_SRC_REGION",
    "SKYHAUL_DST_REGION",
    "SKYHAUL_BWLIMIT",
    "SKYHAUL_CONFIRM_OBJECTS",
    "SKYHAUL_CONFIRM_BYTES",
    "SKYHAUL_MAX_CONNECTIONS",
    "SKYHAUL_MEMORY_BUDGET",
    "SKYHAUL_PART_SIZE",
    "SKYHAUL_MULTIPART_THRESHOLD",
    "SKYHAUL_RETRIES",
    "SKYHAUL_VERIFY",
    "SKYHAUL_STORAGE_CLASS",
];

/// GCS and Azure settings, the providers' and skyhaul's, removed like [`SETTINGS_ENV`].
const CLOUD_ENV: [&str; 16] = [
    "STORAGE_EMULATOR_HOST",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_ACCOUNT",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "SKYHAUL_SRC_GCS_SERVICE_ACCOUNT",
    "SKYHAUL_DST_GCS_SERVICE_ACCOUNT",
    "SKYHAUL_SRC_AZURE_ACCOUNT",
    "SKYHAUL_DST_AZURE_ACCOUNT",
    "SKYHAUL_SRC_AZURE_KEY",
    "SKYHAUL_DST_AZURE_KEY",
    "SKYHAUL_SRC_AZURE_SAS",
    "SKYHAUL_DST_AZURE_SAS",
    "SKYHAUL_SRC_AZURE_CONNECTION_STRING",
    "SKYHAUL_DST_AZURE_CONNECTION_STRING",
];

/// [`skyhaul`] with extra environment variables (set last, so they win). Without them the
/// config file is one that does not exist, so the user's own config never leaks in.
pub fn skyhaul_env(
    args: &[&str],
    src: Option<&S3Server>,
    dst: Option<&S3Server>,
    env: &[(&str, &str)],
) -> Run {
    Run::from(command(args, src, dst, env).output().expect("skyhaul runs"))
}

/// [`skyhaul`] run in the directory `cwd`, where relative paths land.
pub fn skyhaul_in(cwd: &Path, args: &[&str]) -> Run {
    let mut cmd = command(args, None, None, &[]);
    Run::from(cmd.current_dir(cwd).output().expect("skyhaul runs"))
}

/// [`skyhaul`] with at most `open_files` open files (soft and hard limit: skyhaul raises its
/// soft limit to the hard one).
pub fn skyhaul_with_open_files(args: &[&str], open_files: u64) -> Run {
    let mut cmd = command(args, None, None, &[]);
    limit_open_files(&mut cmd, open_files);
    Run::from(cmd.output().expect("skyhaul runs"))
}

/// Makes `cmd` start with at most `limit` open files, soft and hard.
pub fn limit_open_files(cmd: &mut std::process::Command, limit: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: only setrlimit, which is async-signal-safe, runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            match libc::setrlimit(libc::RLIMIT_NOFILE, &limit) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
        });
    }
}

/// The skyhaul command of [`skyhaul_env`], not yet run.
fn command(
    args: &[&str],
    src: Option<&S3Server>,
    dst: Option<&S3Server>,
    env: &[(&str, &str)],
) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_skyhaul"));
    cmd.args(args);
    for (k, v) in test_env(src, dst, env) {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd
}

/// The environment every test run of skyhaul gets, in order (`None` removes the
/// variable): no settings from the environment, a config file and rclone.conf that do not
/// exist, no AWS profile, the test journal, each given server's credentials, then `env`.
pub fn test_env(
    src: Option<&S3Server>,
    dst: Option<&S3Server>,
    env: &[(&str, &str)],
) -> Vec<(String, Option<String>)> {
    let mut vars: Vec<(String, Option<String>)> =
        SETTINGS_ENV.iter().map(|v| (v.to_string(), None)).collect();
    let set = |k: &str, v: &str| (k.to_string(), Some(v.to_string()));
    vars.extend([
        set("SKYHAUL_CONFIG", "/nonexistent/skyhaul-test/config.toml"),
        set("RCLONE_CONFIG", "/nonexistent/skyhaul-test/rclone.conf"),
        ("AWS_PROFILE".to_string(), None),
        set("AWS_CONFIG_FILE", "/dev/null"),
        set("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
        set("AWS_EC2_METADATA_DISABLED", "true"),
        set("SKYHAUL_JOURNAL", &test_journal().to_string_lossy()),
    ]);
    // Nor the developer's GCS and Azure settings (and so never a cloud metadata server).
    vars.extend(CLOUD_ENV.iter().map(|v| (v.to_string(), None)));
    for (side, server) in [("SRC", src), ("DST", dst)] {
        if let Some(s) = server {
            vars.extend(s.env_for(side).into_iter().map(|(k, v)| (k, Some(v))));
        }
    }
    vars.extend(env.iter().map(|(k, v)| set(k, v)));
    vars
}

/// One journal per test binary, so tests never touch the user's own journal. It lives
/// under the build's directory for temporary test files, not in `/tmp`, so test runs
/// leave nothing behind that `cargo clean` does not remove.
/// An endpoint that accepts connections and never answers (a firewall that drops, a hung
/// server or proxy), for as long as the test runs: its URL.
pub fn black_hole() -> String {
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", hole.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in hole.incoming() {
            held.push(conn);
        }
    });
    endpoint
}

/// An endpoint whose connections nothing answers (a firewall that drops, a host cut off):
/// a listener that never accepts, with a backlog of one that one connection fills, so that
/// the kernel drops every later SYN and a client's connect times out.
pub fn dropping() -> String {
    use std::os::fd::FromRawFd;
    // SAFETY: a plain socket, bound and listening, then owned by the `TcpListener`.
    let listener = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0, "socket");
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(libc::bind(fd, (&raw const addr).cast(), len), 0, "bind");
        assert_eq!(libc::listen(fd, 0), 0, "listen");
        std::net::TcpListener::from_raw_fd(fd)
    };
    let addr = listener.local_addr().unwrap();
    let filler = std::net::TcpStream::connect(addr).unwrap();
    // Both live as long as the test process.
    std::mem::forget((listener, filler));
    format!("http://{addr}")
}

pub fn test_journal() -> std::path::PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "skyhaul-test-journal-{}.sqlite",
        std::process::id()
    ))
}

/// Deterministic pseudo-random bytes.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    skyhaul_store::conformance::pattern(len, seed)
}

/// The mixed data set: small, zero-byte, multipart-sized (with `--multipart-threshold 5M`)
/// and keys with unicode, spaces, `+` and `%`.
pub fn mixed() -> BTreeMap<String, Vec<u8>> {
    let mut m = BTreeMap::new();
    m.insert("small.txt".to_string(), data(1000, 1));
    m.insert("empty".to_string(), Vec::new());
    m.insert("dir/nested/deep.bin".to_string(), data(70_000, 2));
    m.insert(
        "big/multipart.bin".to_string(),
        data(12 * 1024 * 1024 + 333, 3),
    );
    m.insert("odd/ünïcödé sp ace+plus%25.txt".to_string(), data(10, 4));
    m.insert("odd/a+b=c&d.txt".to_string(), data(20, 5));
    m
}

pub fn write_tree(root: &Path, files: &BTreeMap<String, Vec<u8>>) {
    for (k, v) in files {
        let p = root.join(k);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, v).unwrap();
    }
}

pub fn read_tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let k = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(k, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    if root.exists() {
        walk(root, root, &mut out);
    }
    out
}

pub async fn read_bucket(
    server: &S3Server,
    bucket: &str,
    prefix: &str,
) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for (k, _) in server.list(bucket, prefix).await {
        let v = server.get(bucket, &k).await.unwrap();
        out.insert(k[prefix.len()..].to_string(), v);
    }
    out
}

pub async fn fill_bucket(
    server: &S3Server,
    bucket: &str,
    prefix: &str,
    files: &BTreeMap<String, Vec<u8>>,
) {
    for (k, v) in files {
        server.put(bucket, &format!("{prefix}{k}"), v).await;
    }
}

/// Options that make the 12 MiB object of [`mixed`] multipart with 5 MiB parts.
pub const SMALL_PARTS: [&str; 4] = ["--multipart-threshold", "5M", "--part-size", "5M"];

/// A real S3 server (s3s-fs) with an empty `bucket`, and the [`mixed`] data set in the
/// local directory `src` of a new temporary directory.
pub async fn bucket_and_local_mixed() -> (
    S3Server,
    tempfile::TempDir,
    std::path::PathBuf,
    BTreeMap<String, Vec<u8>>,
) {
    let s3 = S3Server::start(skyhaul_testkit::S3Kind::S3sFs);
    s3.create_bucket("bucket").await;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let files = mixed();
    write_tree(&src, &files);
    (s3, tmp, src, files)
}

/// A real S3 server with [`mixed`] under `bucket/data/`, and a local destination `dst` in
/// which a file named `dir` stands where a directory must go: copying `s3://bucket/data`
/// there fails for `dir/nested/deep.bin` alone, mid-transfer.
pub async fn bucket_and_blocked_local_dst() -> (S3Server, tempfile::TempDir, std::path::PathBuf) {
    let s3 = S3Server::start(skyhaul_testkit::S3Kind::S3sFs);
    s3.create_bucket("bucket").await;
    fill_bucket(&s3, "bucket", "data/", &mixed()).await;
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("dst");
    std::fs::create_dir_all(&dst).unwrap();
    std::fs::write(dst.join("dir"), b"in the way").unwrap();
    (s3, tmp, dst)
}

/// `cp -r SRC DST ENDPOINT_FLAG ENDPOINT --no-journal`: a recursive copy with one side on
/// a test server (`endpoint_flag` is `--src-endpoint` or `--dst-endpoint`), no journal.
pub fn cp_r<'a>(
    src: &'a str,
    dst: &'a str,
    endpoint_flag: &'a str,
    endpoint: &'a str,
) -> Vec<&'a str> {
    vec![
        "cp",
        "-r",
        src,
        dst,
        endpoint_flag,
        endpoint,
        "--no-journal",
    ]
}

/// Every command, as `skyhaul --help` lists them (with `help` last).
pub const COMMANDS: [&str; 15] = [
    "cp",
    "sync",
    "verify",
    "plan",
    "prices",
    "init",
    "status",
    "clean",
    "config",
    "completions",
    "coordinator",
    "worker",
    "gateway",
    "launch",
    "man",
];

/// One HTTP/1.1 GET with std only: (status, body).
pub fn http_get(url: &str, path: &str, auth: Option<&str>) -> (u16, String) {
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    let (status, _, body) = http_request("GET", url, path, &auth);
    (status, body)
}

/// One HTTP/1.1 request with std only and `headers` (each line ending in CRLF): (status,
/// the response's header lines, body).
/// The head of Azurite's answer to a HEAD of `blob` in `container` (signed with an account
/// SAS), lower-cased; fails the test unless it is 200.
pub fn azure_blob_head(
    azure: &skyhaul_testkit::AzuriteServer,
    container: &str,
    blob: &str,
) -> String {
    let path = format!(
        "/{}/{container}/{blob}?{}",
        azure.account,
        azure.account_sas()
    );
    let (status, head, _) = http_request(
        "HEAD",
        &azure.endpoint,
        &path,
        "x-ms-version: 2020-12-06\r\n",
    );
    assert_eq!(status, 200, "{container}/{blob}: {head}");
    head.to_ascii_lowercase()
}

pub fn http_request(method: &str, url: &str, path: &str, headers: &str) -> (u16, String, String) {
    let addr = url.trim_start_matches("http://");
    let addr = addr.split('/').next().unwrap_or(addr);
    let mut s = std::net::TcpStream::connect(addr)
        .unwrap_or_else(|e| panic!("server at {addr} unreachable: {e}"));
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    // One write: a request arriving in pieces can be answered (and the connection closed)
    // before its last piece, which then resets the connection.
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n");
    s.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let resp = String::from_utf8_lossy(&raw);
    let status = resp[9..12].parse().expect("status code");
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    (status, head.to_string(), body.to_string())
}

/// A fleet coordinator's `GET /v1/status`, parsed.
pub fn fleet_status(url: &str, token: &str) -> serde_json::Value {
    let (code, body) = http_get(url, "/v1/status", Some(&format!("Bearer {token}")));
    assert_eq!(code, 200, "{body}");
    // Small bodies come in one chunk; skip a chunked encoding's size line if present.
    let json = body.trim_start_matches(|c: char| c != '{');
    let end = json.rfind('}').expect("JSON object");
    serde_json::from_str(&json[..=end]).expect("status is JSON")
}

/// A relay key for tests that pass one on (64 hex digits of random bytes: skyhaul refuses
/// a key of a few repeated byte values).
pub const RELAY_KEY: &str = "01650b000de138fccb751e00401a1df8938b8c5181322340948c6069417d7e7a";

/// Bytes the journal says are done: whole objects plus finished parts of open uploads.
pub fn journaled_bytes(journal: &Path) -> u64 {
    let j = skyhaul_journal::Journal::open(journal).unwrap();
    j.transfers()
        .unwrap()
        .iter()
        .map(|t| t.bytes_done + t.upload_bytes_done)
        .sum()
}
