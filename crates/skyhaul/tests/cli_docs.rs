//! `skyhaul completions` and `skyhaul man`: generated from the CLI definition, so they know
//! every subcommand and flag.

mod common;

use common::*;

#[test]
fn completions_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let run = skyhaul(&["completions", shell], None, None);
        assert_eq!(run.code, 0, "{shell}: {}", run.stderr);
        for sub in COMMANDS {
            assert!(run.stdout.contains(sub), "{shell} completions lack {sub}");
        }
        for flag in [
            "dry-run",
            "exclude",
            "files-from",
            "rclone-config",
            "bwlimit",
            "yes",
        ] {
            assert!(
                run.stdout.contains(flag),
                "{shell} completions lack --{flag}"
            );
        }
    }
    assert!(skyhaul(&["completions", "bash"], None, None)
        .stdout
        .contains("complete -F"));
    assert!(skyhaul(&["completions", "fish"], None, None)
        .stdout
        .contains("complete -c skyhaul"));
    assert!(skyhaul(&["completions", "zsh"], None, None)
        .stdout
        .starts_with("#compdef skyhaul"));
    assert_eq!(skyhaul(&["completions", "tcsh"], None, None).code, 2);
}

#[test]
fn man_page() {
    let run = skyhaul(&["man"], None, None);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.starts_with(".ie") || run.stdout.contains(".TH skyhaul"));
    assert!(
        run.stdout.contains(".TH skyhaul 1"),
        "{}",
        &run.stdout[..200]
    );
    for sub in COMMANDS {
        assert!(run.stdout.contains(sub), "man page lacks {sub}");
        // The page the main one refers to exists, with the command's own options.
        let page = skyhaul(&["man", sub], None, None);
        assert_eq!(page.code, 0, "{sub}: {}", page.stderr);
        assert!(
            page.stdout.contains(&format!(".TH skyhaul-{sub} 1")),
            "{sub}: {}",
            &page.stdout[..200.min(page.stdout.len())]
        );
    }
    assert!(skyhaul(&["man", "cp"], None, None)
        .stdout
        .contains("\\-\\-dry\\-run"));
    assert!(
        run.stdout.contains("Exit codes: 0 done"),
        "no exit codes in the man page"
    );
    assert_eq!(skyhaul(&["man", "copy"], None, None).code, 2);
}
