//! Named remotes (`NAME:bucket/path`) from an rclone.conf and from skyhaul's config, against
//! a real S3 server.

mod common;

use common::*;
use skyhaul_testkit::{S3Kind, S3Server};

#[tokio::test(flavor = "multi_thread")]
async fn rclone_conf_remote_works_unchanged() {
    let s3 = S3Server::start(S3Kind::S3sFs);
    s3.create_bucket("bucket").await;
    let files = mixed();
    fill_bucket(&s3, "bucket", "data/", &files).await;
    let tmp = tempfile::tempdir().unwrap();
    let conf = tmp.path().join("rclone.conf");
    std::fs::write(
        &conf,
        format!(
            "[other]\ntype = local\n\n[store]\ntype = s3\nprovider = Other\nenv_auth = false\n\
             access_key_id = {}\nsecret_access_key = {}\nendpoint = {}\nregion = {}\n",
            s3.access_key, s3.secret_key, s3.endpoint, s3.region
        ),
    )
    .unwrap();
    let out = tmp.path().join("out");
    let mut args = vec![
        "cp",
        "-r",
        "store:bucket/data",
        out.to_str().unwrap(),
        "--rclone-config",
        conf.to_str().unwrap(),
    ];
    args.extend(SMALL_PARTS);
    let run = skyhaul(&args, None, None);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(read_tree(&out), files);
    assert!(
        !run.stdout.contains(&s3.secret_key) && !run.stderr.contains(&s3.secret_key),
        "secrets never printed"
    );

    // The default location ($RCLONE_CONFIG), and a remote as the destination.
    let run = skyhaul_env(
        &["cp", "-r", out.to_str().unwrap(), "store:bucket/back/"],
        None,
        None,
        &[("RCLONE_CONFIG", conf.to_str().unwrap())],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(read_bucket(&s3, "bucket", "back/").await, files);

    // An unknown remote says where it looked; a non-s3 one is refused.
    let run = skyhaul(
        &[
            "cp",
            "-r",
            "nope:bucket/data",
            "/tmp/x",
            "--rclone-config",
            conf.to_str().unwrap(),
        ],
        None,
        None,
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("nope"), "{}", run.stderr);
    let run = skyhaul(
        &[
            "cp",
            "-r",
            "other:bucket/data",
            "/tmp/x",
            "--rclone-config",
            conf.to_str().unwrap(),
        ],
        None,
        None,
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
}

/// rclone allows remote names with `.`, `+`, `@` and spaces. Such a remote is used, not
/// taken for a local directory named `my.remote:bucket` (where the copy used to go, verified,
/// exit 0); such a name that no file defines is refused, and nothing is written.
#[tokio::test(flavor = "multi_thread")]
async fn rclone_names_with_dots_and_spaces_are_remotes() {
    let s3 = S3Server::start(S3Kind::S3sFs);
    s3.create_bucket("bucket").await;
    let tmp = tempfile::tempdir().unwrap();
    let conf = tmp.path().join("rclone.conf");
    let section = |name: &str| {
        format!(
            "[{name}]\ntype = s3\naccess_key_id = {}\nsecret_access_key = {}\nendpoint = {}\n\
             region = {}\n\n",
            s3.access_key, s3.secret_key, s3.endpoint, s3.region
        )
    };
    std::fs::write(&conf, section("my.remote") + &section("sp ace")).unwrap();
    let src = tmp.path().join("a.txt");
    std::fs::write(&src, b"hello").unwrap();
    let cwd = tmp.path().join("cwd");
    std::fs::create_dir(&cwd).unwrap();
    let conf = conf.to_str().unwrap();
    for (dst, key) in [
        ("my.remote:bucket/a", "a/a.txt"),
        ("sp ace:bucket/b", "b/a.txt"),
    ] {
        let dst = format!("{dst}/");
        let run = skyhaul_in(
            &cwd,
            &["cp", src.to_str().unwrap(), &dst, "--rclone-config", conf],
        );
        assert_eq!(run.code, 0, "{dst}: {}", run.stderr);
        let got = read_bucket(&s3, "bucket", "").await;
        assert_eq!(
            got.get(key).map(Vec::as_slice),
            Some(&b"hello"[..]),
            "{dst}"
        );
    }
    let run = skyhaul_in(
        &cwd,
        &[
            "cp",
            src.to_str().unwrap(),
            "not.defined:bucket/x",
            "--rclone-config",
            conf,
        ],
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("no remote named 'not.defined'")
            && run.stderr.contains("./not.defined:bucket/x"),
        "{}",
        run.stderr
    );
    assert_eq!(
        std::fs::read_dir(&cwd).unwrap().count(),
        0,
        "written locally"
    );
    // A local file with such a name (a timestamp): the error says how to copy it.
    let stamped = "backup.2024-01-01T10:00:00.tar";
    std::fs::write(cwd.join(stamped), b"tar").unwrap();
    let run = skyhaul_in(
        &cwd,
        &["cp", stamped, tmp.path().join("out/").to_str().unwrap()],
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "a local path of that name exists: write ./{stamped}"
        )),
        "{}",
        run.stderr
    );
    let dot = format!("./{stamped}");
    let run = skyhaul_in(
        &cwd,
        &["cp", &dot, tmp.path().join("out/").to_str().unwrap()],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        std::fs::read(tmp.path().join("out").join(stamped)).unwrap(),
        b"tar"
    );
}

/// A remote from `skyhaul config` (endpoint only; keys from the environment) and an
/// explicit flag winning over the remote's endpoint.
#[tokio::test(flavor = "multi_thread")]
async fn skyhaul_config_remote_and_flags_win() {
    let s3 = S3Server::start(S3Kind::S3sFs);
    s3.create_bucket("bucket").await;
    let files = mixed();
    fill_bucket(&s3, "bucket", "data/", &files).await;
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("config.toml");
    let file = file.to_str().unwrap();
    let set = skyhaul_env(
        &[
            "config",
            "set",
            "remotes.mine.endpoint",
            "http://127.0.0.1:9",
        ],
        None,
        None,
        &[("SKYHAUL_CONFIG", file)],
    );
    assert_eq!(set.code, 0, "{}", set.stderr);

    // The configured endpoint is unreachable: the flag must win for this to work.
    let out = tmp.path().join("out");
    let mut args = vec![
        "cp",
        "-r",
        "mine:bucket/data",
        out.to_str().unwrap(),
        "--src-endpoint",
        &s3.endpoint,
    ];
    args.extend(SMALL_PARTS);
    let run = skyhaul_env(&args, Some(&s3), None, &[("SKYHAUL_CONFIG", file)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(read_tree(&out), files);

    let set = skyhaul_env(
        &["config", "set", "remotes.mine.endpoint", &s3.endpoint],
        None,
        None,
        &[("SKYHAUL_CONFIG", file)],
    );
    assert_eq!(set.code, 0, "{}", set.stderr);
    let out = tmp.path().join("out2");
    let mut args = vec!["cp", "-r", "mine:bucket/data", out.to_str().unwrap()];
    args.extend(SMALL_PARTS);
    let run = skyhaul_env(&args, Some(&s3), None, &[("SKYHAUL_CONFIG", file)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(read_tree(&out), files);
}
