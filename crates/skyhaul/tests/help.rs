//! `--help` of every command, pinned by snapshots: a change to the CLI shows up in review
//! as a change to what users read. Every command's help has examples.

mod common;

use common::*;

/// The config subcommands, as `skyhaul config --help` lists them.
const CONFIG_ACTIONS: [&str; 6] = ["get", "set", "list", "unset", "path", "help"];

/// The names in the "Commands:" section of a help text.
fn listed(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

fn help(args: &[&str]) -> String {
    let mut all = args.to_vec();
    all.push("--help");
    let run = skyhaul(&all, None, None);
    assert_eq!(run.code, 0, "{all:?}: {}", run.stderr);
    run.stdout
}

#[test]
fn every_command_is_covered() {
    // Checked, so that a new command cannot go without a snapshot.
    let mut commands = COMMANDS.to_vec();
    commands.push("help");
    assert_eq!(listed(&help(&[])), commands);
    assert_eq!(listed(&help(&["config"])), CONFIG_ACTIONS);
}

#[test]
fn help_snapshots_with_examples() {
    insta::assert_snapshot!("skyhaul", help(&[]));
    for command in COMMANDS {
        let text = help(&[command]);
        assert!(
            text.contains("Example"),
            "`skyhaul {command} --help` has no examples"
        );
        insta::assert_snapshot!(format!("skyhaul_{command}"), text);
    }
    for action in CONFIG_ACTIONS.iter().filter(|c| **c != "help") {
        let text = help(&["config", action]);
        assert!(
            text.contains("Example"),
            "`skyhaul config {action} --help` has no examples"
        );
        insta::assert_snapshot!(format!("skyhaul_config_{action}"), text);
    }
}
