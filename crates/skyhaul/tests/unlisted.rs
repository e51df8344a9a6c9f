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

    // The dry run exits as the real run will, for scripts that gate on it.
    let dry = sync(&["--dry-run"]);
    assert_eq!(dry.code, 1, "{}", dry.stderr);
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
        run.stderr.contains("1 deletion skipped after 2 failures"),
        "{}",
        run.stderr
    );
    assert!(dst.join("old").exists(), "nothing deleted");
    assert!(dst.join("z/c.txt").exists(), "the rest copied");

    let run = sync(&["--exclude", "b*.txt", "--exclude", "d*/", "-v"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!dst.join("old").exists(), "deleted once nothing failed");
    // `-v` names what was deleted.
    let deleted = format!("INFO deleted {}/old\n", dst.display());
    assert!(run.stderr.contains(&deleted), "{}", run.stderr);
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

fn mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Tests run as root, who may read anything: runs that need a directory they cannot read
/// run as `nobody`, in a tree under `root` that nobody may enter, writing to a `dst` it
/// owns. `locked` directories are made unreadable to it.
struct Nobody {
    _tmp: tempfile::TempDir,
    src: std::path::PathBuf,
    dst: std::path::PathBuf,
}

impl Nobody {
    fn new(src_files: &[&str], dst_files: &[&str], locked: &[&str]) -> Nobody {
        let tmp = tempfile::tempdir().unwrap();
        let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
        let tree = |files: &[&str]| -> BTreeMap<String, Vec<u8>> {
            files
                .iter()
                .map(|f| (f.to_string(), f.as_bytes().to_vec()))
                .collect()
        };
        std::fs::create_dir(&src).unwrap();
        std::fs::create_dir(&dst).unwrap();
        write_tree(&src, &tree(src_files));
        write_tree(&dst, &tree(dst_files));
        mode(tmp.path(), 0o755);
        chown_all(&dst);
        for dir in locked {
            let dir = tmp.path().join(dir);
            std::fs::create_dir_all(&dir).unwrap();
            std::os::unix::fs::chown(&dir, Some(0), Some(0)).unwrap();
            mode(&dir, 0o700);
        }
        Nobody {
            _tmp: tmp,
            src,
            dst,
        }
    }

    /// `skyhaul ARGS... SRC DST` as nobody, JSON out, without a journal.
    fn run(&self, args: &[&str]) -> Run {
        let mut cmd = std::process::Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_skyhaul"))
            .args(args)
            .arg("--json")
            .args((args[0] != "verify").then_some("--no-journal"))
            .args([&self.src, &self.dst])
            .env("HOME", &self.dst);
        for (k, v) in test_env(None, None, &[]) {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        Run::from(cmd.output().expect("setpriv runs"))
    }
}

fn chown_all(path: &Path) {
    std::os::unix::fs::chown(path, Some(65534), Some(65534)).unwrap();
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            chown_all(&entry.unwrap().path());
        }
    }
}

/// A directory the user may not read fails alone, and says how to leave it out.
#[test]
fn a_directory_that_cannot_be_read_fails_alone() {
    let t = Nobody::new(
        &["a.txt", "lost+found/x", "z/c.txt"],
        &[],
        &["src/lost+found"],
    );
    let run = t.run(&["cp", "-r"]);
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
    assert!(t.dst.join("z/c.txt").exists());

    let run = t.run(&["cp", "-r", "--exclude", "lost+found/"]);
    assert_eq!(run.code, 0, "{}", run.stderr);

    // A destination directory that may be written but not read: what was written into it
    // is not checked, and not missing either.
    let drop_box = t.dst.join("z");
    mode(&drop_box, 0o300);
    let run = t.run(&["cp", "-r", "--exclude", "lost+found/"]);
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

/// Many unreadable directories are no denial of the credentials: they do not stop the
/// transfer, and one alone is exit 1, not 4.
#[test]
fn unreadable_directories_are_not_denied_credentials() {
    let dirs: Vec<String> = (0..120).map(|i| format!("d{i:03}/f")).collect();
    let mut files: Vec<&str> = dirs.iter().map(String::as_str).collect();
    files.push("z.txt");
    let locked: Vec<String> = (0..120).map(|i| format!("src/d{i:03}")).collect();
    let locked: Vec<&str> = locked.iter().map(String::as_str).collect();
    let t = Nobody::new(&files, &[], &locked);
    let run = t.run(&["cp", "-r"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let r = report(&run);
    assert_eq!(
        (&r["objects_copied"], &r["objects_failed"]),
        (&1.into(), &120.into()),
        "{r}"
    );
    assert!(t.dst.join("z.txt").exists());

    let alone = Nobody::new(&["locked/f"], &[], &["src/locked"]);
    let run = alone.run(&["cp", "-r"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(failed_keys(&report(&run)), ["locked/"]);

    // Beside a file these credentials may not read: not "denied everything" either.
    let beside = Nobody::new(&["locked/f", "secret"], &[], &["src/locked"]);
    mode(&beside.src.join("secret"), 0o600);
    let run = beside.run(&["cp", "-r"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(failed_keys(&report(&run)), ["locked/", "secret"]);
}

/// A sync deletes the destination's copies only of what the source listed: an entry the
/// destination's listing could not include does not make an empty source look full, and
/// an exclude that leaves out only some of an unreadable directory's keys does not cover it.
#[test]
fn a_sync_never_deletes_what_an_unlisted_entry_may_hold() {
    // An empty source (an unmounted mount point) with lost+found at the destination.
    let t = Nobody::new(&[], &["keep", "sub/keep"], &["dst/lost+found"]);
    let run = t.run(&["sync", "--delete", "-y", "--exclude", "lost+found/"]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(run.stderr.contains("no objects under"), "{}", run.stderr);
    assert!(t.dst.join("sub/keep").exists(), "nothing deleted");
    // The same with the source's own lost+found, unreadable and left out.
    let t = Nobody::new(&[], &["keep", "sub/keep"], &["src/lost+found"]);
    let run = t.run(&["sync", "--delete", "-y", "--exclude", "lost+found/"]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(t.dst.join("sub/keep").exists(), "nothing deleted");

    // Keys under src/locked/ that the exclude does not cover are still at the source.
    let t = Nobody::new(
        &["a", "locked/.keep", "locked/x"],
        &["a", "locked/.keep", "locked/x"],
        &["src/locked"],
    );
    for exclude in ["locked/**/[!.]*", "locked/*"] {
        let run = t.run(&["sync", "--delete", "-y", "--exclude", exclude]);
        assert_eq!(run.code, 1, "{exclude}: {}", run.stderr);
        assert_eq!(failed_keys(&report(&run)), ["locked/"], "{exclude}");
        assert!(
            t.dst.join("locked/.keep").exists(),
            "{exclude}: nothing deleted"
        );
    }
}

/// The same when the left-out directory can be read and holds files (fsck's orphans in a
/// `lost+found` that root reads): a filtered `sync --delete` counts only what the filters
/// select, so a source with nothing else is empty and refused, and deletes nothing. A
/// selected object makes it a source like any other.
#[test]
fn a_source_empty_but_for_what_the_filters_leave_out_is_empty() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("mnt"), tmp.path().join("mirror"));
    write_tree(
        &src,
        &BTreeMap::from([("lost+found/#1234".into(), b"x".to_vec())]),
    );
    let kept = BTreeMap::from([
        ("a.txt".to_string(), b"a".to_vec()),
        ("sub/b.txt".to_string(), b"b".to_vec()),
    ]);
    write_tree(&dst, &kept);
    let (s, d) = (src.to_str().unwrap(), dst.to_str().unwrap());
    let sync = |extra: &[&str]| {
        let args = [&["sync", "--delete", "-y", s, d, "--no-journal"], extra].concat();
        skyhaul(&args, None, None)
    };
    for dry in [&["--dry-run"][..], &[]] {
        let run = sync(&[dry, &["--exclude", "lost+found/"]].concat());
        assert_eq!(run.code, 3, "{dry:?}: {}", run.stderr);
        assert!(
            run.stderr.contains("no objects under")
                && run.stderr.contains("that the filters select"),
            "{}",
            run.stderr
        );
        assert_eq!(read_tree(&dst), kept, "{dry:?}: nothing deleted");
    }
    // Unfiltered, the orphan is the source's object; with --include it is selected.
    for filter in [&[][..], &["--include", "lost+found/**"]] {
        let run = sync(filter);
        assert_eq!(run.code, 0, "{filter:?}: {}", run.stderr);
        write_tree(&dst, &kept);
    }
    // Size and time rules count for nothing here, as for deletions: a quiet week's
    // `--newer-than 7d` still mirrors what the source lost.
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(30 * 86_400);
    let file = std::fs::File::options()
        .write(true)
        .open(src.join("lost+found/#1234"));
    file.unwrap().set_modified(old).unwrap();
    let run = sync(&["--newer-than", "7d"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        read_tree(&dst),
        BTreeMap::from([("lost+found/#1234".into(), b"x".to_vec())]),
        "the source's old file kept, what it lost deleted"
    );
}

/// `verify` does not call the other side's objects under a directory it could not list
/// missing or extra: they are not checked.
#[test]
fn verify_leaves_the_objects_under_an_unlisted_directory_unchecked() {
    let files = ["a", "d/x", "d/y"];
    for locked in ["dst/d", "src/d"] {
        let t = Nobody::new(&files, &files, &[locked]);
        let run = t.run(&["verify", "-r"]);
        assert_eq!(run.code, 1, "{locked}: {}", run.stderr);
        let v = report(&run);
        let v = if v["verification"].is_object() {
            &v["verification"]
        } else {
            &v
        };
        let counts =
            ["objects", "missing", "extra", "unreadable", "size_ok"].map(|k| v[k].as_u64());
        assert_eq!(
            counts,
            [Some(3), Some(0), Some(0), Some(3), Some(1)],
            "{locked}: {v}"
        );
    }
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
