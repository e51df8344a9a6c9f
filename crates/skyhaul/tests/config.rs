//! `skyhaul config` and the precedence flag > environment > config file > default.

mod common;

use common::*;

fn with_config<'a>(path: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![("SKYHAUL_CONFIG", path)];
    env.extend_from_slice(extra);
    env
}

#[test]
fn get_set_list_unset() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("sub/config.toml");
    let file = file.to_str().unwrap();
    let env = with_config(file, &[]);
    let run = |args: &[&str]| skyhaul_env(args, None, None, &env);

    let r = run(&["config", "get", "max_connections"]);
    assert_eq!(r.code, 1, "unset key: {}", r.stderr);
    assert_eq!(r.stdout, "");
    assert_eq!(run(&["config", "set", "max-connections", "12"]).code, 0);
    assert_eq!(run(&["config", "set", "part_size", "64M"]).code, 0);
    assert_eq!(
        run(&[
            "config",
            "set",
            "remotes.nebius.endpoint",
            "https://storage.eu-north1.nebius.cloud"
        ])
        .code,
        0
    );
    let r = run(&["config", "get", "max_connections"]);
    assert_eq!((r.code, r.stdout.as_str()), (0, "12\n"), "{}", r.stderr);
    let r = run(&["config", "list"]);
    assert_eq!(
        r.stdout,
        "max_connections = 12\npart_size = 64M\n\
         remotes.nebius.endpoint = https://storage.eu-north1.nebius.cloud\n"
    );
    let r = run(&["config", "list", "--json"]);
    assert_eq!(r.json()["part_size"], "64M");
    let r = run(&["config", "path"]);
    assert_eq!(r.stdout.trim(), file);
    assert!(std::fs::read_to_string(file)
        .unwrap()
        .contains("max_connections = 12"));

    assert_eq!(run(&["config", "unset", "max_connections"]).code, 0);
    assert_eq!(run(&["config", "get", "max_connections"]).code, 1);

    // Typos, bad values and secrets are usage errors and change nothing.
    let r = run(&["config", "get", "max_conections"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let r = run(&["config", "set", "retries", "many"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let r = run(&["config", "set", "remotes.nebius.secret_access_key", "abc"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(!r.stderr.contains("abc"), "{}", r.stderr);
    let text = std::fs::read_to_string(file).unwrap();
    assert!(!text.contains("abc") && !text.contains("many"), "{text}");
}

/// The verification mode shows in the report, so it shows which layer won.
#[test]
fn precedence_flag_env_file_default() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    write_tree(&src, &mixed());
    let file = tmp.path().join("config.toml");
    let file = file.to_str().unwrap();
    let mode = |n: u32, env: &[(&str, &str)], flags: &[&str]| {
        let dst = tmp.path().join(format!("out{n}"));
        let mut args = vec![
            "cp",
            "-r",
            src.to_str().unwrap(),
            dst.to_str().unwrap(),
            "--json",
            "--no-journal",
        ];
        args.extend(flags);
        let r = skyhaul_env(&args, None, None, &with_config(file, env));
        assert_eq!(r.code, 0, "{}", r.stderr);
        r.json()["verification"]["mode"].clone()
    };
    // Built-in default.
    assert_eq!(mode(1, &[], &[]), "checksum");
    // Config file.
    let set = skyhaul_env(
        &["config", "set", "verify", "size"],
        None,
        None,
        &with_config(file, &[]),
    );
    assert_eq!(set.code, 0, "{}", set.stderr);
    assert_eq!(mode(2, &[], &[]), "size");
    // Environment over the file.
    assert_eq!(mode(3, &[("SKYHAUL_VERIFY", "deep")], &[]), "deep");
    // Flag over everything.
    assert_eq!(
        mode(4, &[("SKYHAUL_VERIFY", "deep")], &["--verify", "checksum"]),
        "checksum"
    );

    // A bad environment value is a usage error naming the variable.
    let dst = tmp.path().join("bad");
    let r = skyhaul_env(
        &["cp", "-r", src.to_str().unwrap(), dst.to_str().unwrap()],
        None,
        None,
        &with_config(file, &[("SKYHAUL_MAX_CONNECTIONS", "0")]),
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("SKYHAUL_MAX_CONNECTIONS"), "{}", r.stderr);

    // A broken config file is reported with its name.
    std::fs::write(file, "max_connections = \"lots\"\n").unwrap();
    let r = skyhaul_env(
        &["cp", "-r", src.to_str().unwrap(), dst.to_str().unwrap()],
        None,
        None,
        &with_config(file, &[]),
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("config.toml"), "{}", r.stderr);
}

#[test]
fn config_journal_location_applies() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    write_tree(&src, &mixed());
    let file = tmp.path().join("config.toml");
    let file = file.to_str().unwrap();
    let journal = tmp.path().join("from-config.sqlite");
    let set = skyhaul_env(
        &["config", "set", "journal", journal.to_str().unwrap()],
        None,
        None,
        &with_config(file, &[]),
    );
    assert_eq!(set.code, 0, "{}", set.stderr);
    // The test helper sets SKYHAUL_JOURNAL, which would win: remove it with an empty value.
    let dst = tmp.path().join("out");
    let r = skyhaul_env(
        &["cp", "-r", src.to_str().unwrap(), dst.to_str().unwrap()],
        None,
        None,
        &with_config(file, &[("SKYHAUL_JOURNAL", "")]),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(journal.exists(), "journal from the config file was used");
}

/// A config file that does not parse: `config path` still prints its path (it is how the
/// file is found to be fixed), and the commands that need the file say where the problem
/// is, by line and column, in one line.
#[test]
fn a_broken_config_file_is_found_and_located() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("config.toml");
    std::fs::write(
        &file,
        "retries = 3\n\n\nverify = \"size\"\npart_size = 16M\n",
    )
    .unwrap();
    let env = with_config(file.to_str().unwrap(), &[]);
    let path = skyhaul_env(&["config", "path"], None, None, &env);
    assert_eq!(path.code, 0, "{}", path.stderr);
    assert_eq!(path.stdout.trim(), file.to_str().unwrap());
    for args in [
        &["config", "get", "retries"][..],
        &["config", "unset", "retries"],
        &["config", "list"],
        &["prices"],
    ] {
        let run = skyhaul_env(args, None, None, &env);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(
            run.stderr.contains("config.toml: line 5, column 13: "),
            "{args:?}: {}",
            run.stderr
        );
        assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
    }
}

/// Reading a credential's key is refused as what it is, not as a write.
#[test]
fn get_of_a_credential_key_says_it_is_no_setting() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("config.toml");
    let env = with_config(file.to_str().unwrap(), &[]);
    let run = skyhaul_env(
        &["config", "get", "remotes.aws.secret_access_key"],
        None,
        None,
        &env,
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("'remotes.aws.secret_access_key' names a credential, not a setting"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("store"), "{}", run.stderr);
}
