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

/// The lines of a help text's examples longer than fit an 80-column terminal, where clap
/// would wrap them onto a line that looks like another example: a user who pastes the
/// first line of `cp`'s filter example then copies without its `--newer-than`.
fn too_wide(help: &str) -> Vec<String> {
    let mut examples = false;
    let mut wide = Vec::new();
    for line in help.lines() {
        if line.starts_with("Example") {
            examples = true;
        } else if line.is_empty() {
            examples = false;
        } else if examples && line.chars().count() > 79 {
            wide.push(line.to_string());
        }
    }
    wide
}

#[test]
fn examples_fit_80_columns() {
    let mut commands: Vec<Vec<&str>> = vec![vec![]];
    commands.extend(COMMANDS.iter().map(|c| vec![*c]));
    commands.extend(
        CONFIG_ACTIONS
            .iter()
            .filter(|a| **a != "help")
            .map(|a| vec!["config", *a]),
    );
    let wide: Vec<String> = commands.iter().flat_map(|c| too_wide(&help(c))).collect();
    assert!(wide.is_empty(), "{}", wide.join("\n"));
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
