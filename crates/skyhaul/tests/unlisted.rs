//! Source entries a listing cannot include — a name that is no key, a directory that may
//! not be read (`lost+found` at the top of a mounted file system) — fail alone: the rest
//! is copied, a sync deletes nothing, and an `--exclude` of them is a clean run.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// A tree with two good files and two entries whose names are not UTF-8: a file, and a
/// directory holding a file.
fn tree_with_bad_names(src: &Path) {
    write_tree(
        src,
        &BTreeMap::from([
            ("a.txt".to_string(), b"a".to_vec()),
            ("z/c.txt".to_string(), b"c".to_vec()),
        ]),
    );
    std::fs::write(src.join(OsStr::from_bytes(b"b\xff.txt")), b"b").unwrap();
    let dir = src.join(OsStr::from_bytes(b"d\xfe"));
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("inner"), b"i").unwrap();
}

fn report(run: &Run) -> serde_json::Value {
    let done = run.stdout.lines().last().expect("a report");
    serde_json::from_str(done).unwrap()
}

fn failed_keys(report: &serde_json::Value) -> Vec<String> {
    let failures = report["failures"].as_array().expect("failures");
    failures
        .iter()
        .map(|f| f["key"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn names_that_are_no_keys_fail_alone_and_an_exclude_leaves_them_out() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    tree_with_bad_names(&src);
    let cp = |extra: &[&str]| {
        let mut args = vec!["cp", "-r", "--json", "--no-journal"];
        args.extend_from_slice(extra);
        args.extend([src.to_str().unwrap(), dst.to_str().unwrap()]);
        skyhaul(&args, None, None)
    };

    let run = cp(&[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let r = report(&run);
    assert_eq!(r["objects_copied"], 2, "{r}");
    assert_eq!(r["objects_failed"], 2, "{r}");
    assert_eq!(failed_keys(&r), ["b\u{FFFD}.txt", "d\u{FFFD}/"]);
    let error = r["failures"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("not UTF-8") && error.contains("--exclude"),
        "{error}"
    );
    assert_eq!(
        read_tree(&dst),
        BTreeMap::from([
            ("a.txt".to_string(), b"a".to_vec()),
            ("z/c.txt".to_string(), b"c".to_vec()),
        ])
    );

    // Left out by name, they are no failure.
    let run = cp(&["--exclude", "b*.txt", "--exclude", "d*/"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let r = report(&run);
    assert_eq!(r["objects_failed"], 0, "{r}");
    // An exclude of some of a directory's keys does not cover the directory.
    let run = cp(&["--exclude", "b*.txt", "--exclude", "d*/*.txt"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(failed_keys(&report(&run)), ["d\u{FFFD}/"]);
}

#[test]
fn a_sync_with_an_entry_it_cannot_list_deletes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    tree_with_bad_names(&src);
    write_tree(
        &dst,
        &BTreeMap::from([("old".to_string(), b"only here".to_vec())]),
    );
    let sync = |extra: &[&str]| {
        let mut args = vec!["sync", "--delete", "-y", "--no-journal"];
        args.extend_from_slice(extra);
        args.extend([src.to_str().unwrap(), dst.to_str().unwrap()]);
        skyhaul(&args, None, None)
    };

    let dry = sync(&["--dry-run"]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert!(!dry.stdout.contains("delete "), "{}", dry.stdout);
    assert!(
        dry.stderr.contains(
            "fail 2 entries it cannot list and delete 0 (not 1: a sync with a failure deletes \
             nothing)"
        ),
        "{}",
        dry.stderr
    );

    let run = sync(&[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("1 deletion skipped: 2 copies failed"),
        "{}",
        run.stderr
    );
    assert!(dst.join("old").exists(), "nothing deleted");
    assert!(dst.join("z/c.txt").exists(), "the rest copied");

    let run = sync(&["--exclude", "b*.txt", "--exclude", "d*/"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!dst.join("old").exists(), "deleted once nothing failed");
}

#[test]
fn verify_counts_an_entry_it_cannot_list_as_not_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    tree_with_bad_names(&src);
    write_tree(
        &dst,
        &BTreeMap::from([
            ("a.txt".to_string(), b"a".to_vec()),
            ("z/c.txt".to_string(), b"c".to_vec()),
        ]),
    );
    let run = skyhaul(
        &[
            "verify",
            "-r",
            "--json",
            src.to_str().unwrap(),
            dst.to_str().unwrap(),
        ],
        None,
        None,
    );
    // Nothing is wrong, but not everything could be checked.
    assert_eq!(run.code, 1, "{}", run.stderr);
    let v = report(&run);
    let v = if v["verification"].is_object() {
        &v["verification"]
    } else {
        &v
    };
    assert_eq!(v["missing"], 0, "{v}");
    assert_eq!(v["unreadable"], 2, "{v}");
    assert_eq!(v["size_ok"], 2, "{v}");
}

/// A directory the user may not read fails alone (tests run as root, who may read
/// anything, so the copy runs as `nobody`).
#[test]
fn a_directory_that_cannot_be_read_fails_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (src, dst) = (root.join("src"), root.join("dst"));
    write_tree(
        &src,
        &BTreeMap::from([
            ("a.txt".to_string(), b"a".to_vec()),
            ("lost+found/x".to_string(), b"x".to_vec()),
            ("z/c.txt".to_string(), b"c".to_vec()),
        ]),
    );
    std::fs::create_dir(&dst).unwrap();
    let mode = |p: &Path, m: u32| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    };
    mode(root, 0o755);
    mode(&src.join("lost+found"), 0o700);
    std::os::unix::fs::chown(&dst, Some(65534), Some(65534)).unwrap();
    let as_nobody = |extra: &[&str]| {
        let mut cmd = std::process::Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_skyhaul"))
            .args(["cp", "-r", "--json", "--no-journal"])
            .args(extra)
            .args([&src, &dst])
            .env("HOME", &dst);
        for (k, v) in test_env(None, None, &[]) {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        Run::from(cmd.output().expect("setpriv runs"))
    };

    let run = as_nobody(&[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let r = report(&run);
    assert_eq!(r["objects_copied"], 2, "{r}");
    assert_eq!(failed_keys(&r), ["lost+found/"]);
    let error = r["failures"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("src/lost+found/: cannot list directory")
            && error.contains("permission")
            && error.contains("--exclude"),
        "{error}"
    );
    assert!(dst.join("z/c.txt").exists());

    let run = as_nobody(&["--exclude", "lost+found/"]);
    assert_eq!(run.code, 0, "{}", run.stderr);

    // A destination directory that may be written but not read: what was written into it
    // is not checked, and not missing either.
    let drop_box = dst.join("z");
    mode(&drop_box, 0o300);
    std::os::unix::fs::chown(&drop_box, Some(65534), Some(65534)).unwrap();
    let run = as_nobody(&["--exclude", "lost+found/"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let v = &report(&run)["verification"];
    assert_eq!(
        (&v["missing"], &v["unreadable"]),
        (&0.into(), &1.into()),
        "{v}"
    );
    let problem = v["problems"][0]["error"].as_str().unwrap();
    assert!(problem.contains("z/: cannot list directory"), "{problem}");
}

/// A fleet's coordinator plans the same way: the entries fail there, the workers copy the
/// rest.
#[test]
fn a_fleet_fails_them_alone_too() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    tree_with_bad_names(&src);
    let run = skyhaul(
        &[
            "cp",
            "-r",
            "--json",
            "-y",
            "--workers",
            "1",
            src.to_str().unwrap(),
            dst.to_str().unwrap(),
        ],
        None,
        None,
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    let r = report(&run);
    assert_eq!(r["objects_copied"], 2, "{r}");
    assert_eq!(failed_keys(&r), ["b\u{FFFD}.txt", "d\u{FFFD}/"]);
    assert!(dst.join("z/c.txt").exists());
}
