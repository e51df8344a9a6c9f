//! `skyhaul init`: find the credentials already on this machine and record where they
//! are (never what they are) in skyhaul's config.
//!
//! Why: a new user has AWS profiles, maybe a gcloud login and Azure variables, and should
//! not have to retype their names. Why never secrets: the config file ends up in dotfile
//! repositories and screen shares (see `config.rs`), so init records profile names,
//! regions, a file's path and variable names, and nothing it reads from a credentials file
//! other than section names ever leaves this module.
//!
//! Re-runnable: only keys that are unset are written, a remote that exists is left as it
//! is (the user may have edited it), and when nothing is new the file is not touched.

use crate::args::InitArgs;
use crate::config::{valid_remote_name, Config};
use crate::exit::{self, CliError, ExitCode};
use crate::output::outln;
use crate::remotes::RcloneConfig;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What was found on this machine.
#[derive(Debug, Default, PartialEq)]
struct Found {
    /// AWS profile name → its region (from the config file), if any.
    aws_profiles: BTreeMap<String, Option<String>>,
    /// The AWS files that were read.
    aws_files: Vec<PathBuf>,
    /// The AWS files looked for (`$AWS_CONFIG_FILE` or its default, and the credentials').
    aws_searched: Vec<PathBuf>,
    /// Profiles the AWS SDK ignores, by name (it warns of each on every command).
    aws_ignored: Vec<String>,
    gcp_adc: Option<PathBuf>,
    /// Names of the `AZURE_*` variables that are set.
    azure_env: Vec<String>,
}

pub fn run(args: InitArgs) -> ExitCode {
    match init(&args) {
        Ok(()) => ExitCode::Ok,
        Err(e) => {
            eprintln!("skyhaul: error: {}", e.message);
            e.code
        }
    }
}

fn init(args: &InitArgs) -> Result<(), CliError> {
    let path = Config::default_path().map_err(exit::usage)?;
    let mut config = Config::load(&path).map_err(exit::usage)?;
    let found = detect(dirs::home_dir().as_deref(), |k| std::env::var_os(k));
    let lines = apply(&found, &mut config)?;
    for w in &lines.warnings {
        eprintln!("skyhaul: warning: {w}");
    }
    outln!("skyhaul init: config file {}", path.display());
    for l in &lines.report {
        outln!("  {l}");
    }
    if lines.added == 0 {
        outln!("nothing new to record");
    } else if args.dry_run {
        outln!(
            "dry run: would record {} settings; nothing written",
            lines.added
        );
    } else {
        config.save(&path).map_err(|e| CliError {
            code: ExitCode::PartialFailure,
            message: e.to_string(),
        })?;
        outln!(
            "recorded {} settings (see `skyhaul config list`)",
            lines.added
        );
    }
    Ok(())
}

/// Looks for AWS profiles, GCP application-default credentials and Azure variables, with
/// the home directory and the environment passed in so tests can fake both.
fn detect(home: Option<&Path>, env: impl Fn(&str) -> Option<std::ffi::OsString>) -> Found {
    let mut found = Found::default();
    let file = |var: &str, rel: &str| {
        env(var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| home.map(|h| h.join(rel)))
    };
    // Profiles are `[default]` and `[profile NAME]` in the config file, `[NAME]` in the
    // credentials file; other sections (`[sso-session …]`, `[services …]`) are not profiles.
    let sources = [
        (file("AWS_CONFIG_FILE", ".aws/config"), true),
        (
            file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials"),
            false,
        ),
    ];
    for (path, is_config) in sources {
        found.aws_searched.extend(path.clone());
        let Some(ini) = path.as_deref().and_then(read_ini) else {
            continue;
        };
        found.aws_files.extend(path);
        for section in ini.remote_names() {
            let name = match (is_config, section.strip_prefix("profile ")) {
                (true, Some(name)) => name.trim(),
                (true, None) if section == "default" => section,
                (true, None) => continue,
                (false, _) => section,
            };
            if !aws_identifier(name) {
                if !found.aws_ignored.iter().any(|n| n == name) {
                    found.aws_ignored.push(name.to_string());
                }
                continue;
            }
            let region = ini.value(section, "region").map(str::to_string);
            let entry = found.aws_profiles.entry(name.to_string()).or_default();
            if entry.is_none() {
                *entry = region;
            }
        }
    }
    let adc = env("GOOGLE_APPLICATION_CREDENTIALS")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            let dir = env("CLOUDSDK_CONFIG")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .or_else(|| home.map(|h| h.join(".config/gcloud")))?;
            Some(dir.join("application_default_credentials.json"))
        });
    found.gcp_adc = adc.filter(|p| p.is_file());
    found.azure_env = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| k.starts_with("AZURE_") && env(k).is_some_and(|v| !v.is_empty()))
        .filter(|k| {
            k.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        })
        .collect();
    found.azure_env.sort();
    found
}

/// An INI file's sections, or `None` when it is missing or unreadable (init goes on
/// without it; the reason is not printed, since a line of it could be a secret).
fn read_ini(path: &Path) -> Option<RcloneConfig> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        // The error is about the file (a directory, no permission), never its contents.
        Err(e) => {
            eprintln!(
                "skyhaul: warning: cannot read {}: {e}; skipped",
                path.display()
            );
            return None;
        }
    };
    match RcloneConfig::parse(&text, path) {
        Ok(ini) => Some(ini),
        Err(_) => {
            eprintln!(
                "skyhaul: warning: {} is not an INI file skyhaul can read; skipped",
                path.display()
            );
            None
        }
    }
}

/// Whether the AWS SDK takes `name` as a profile name (`validate_identifier` in
/// aws-runtime's profile parser): it ignores any other profile, with a warning of its own.
fn aws_identifier(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-/.%@:+".contains(c))
}

/// The remote name for an AWS profile: `aws` for the default, `aws-NAME` for the others,
/// with characters a remote name cannot hold replaced by `-`.
fn remote_name(profile: &str) -> String {
    if profile == "default" {
        return "aws".to_string();
    }
    let clean: String = profile
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("aws-{clean}")
}

struct Applied {
    report: Vec<String>,
    /// Profiles left out, and why (printed to stderr).
    warnings: Vec<String>,
    added: usize,
}

/// Records what was found in `config`, leaving every key that is already set alone.
fn apply(found: &Found, config: &mut Config) -> Result<Applied, CliError> {
    let mut report = Vec::new();
    let mut added = 0;
    let shown = |files: &[PathBuf]| {
        let v: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
        v.join(", ")
    };
    if found.aws_profiles.is_empty() {
        report.push(format!(
            "AWS: no profiles found ({})",
            shown(&found.aws_searched)
        ));
    } else {
        report.push(format!("AWS profiles in {}:", shown(&found.aws_files)));
    }
    let mut warnings: Vec<String> = found
        .aws_ignored
        .iter()
        .map(|p| {
            format!(
                "AWS profile '{p}' skipped: the AWS SDK ignores it (a profile name is ASCII letters, digits and _-/.%@:+)"
            )
        })
        .collect();
    // Which profile each remote name went to in this run: two profiles may make one name.
    let mut taken: BTreeMap<String, &str> = BTreeMap::new();
    for (profile, region) in &found.aws_profiles {
        let name = remote_name(profile);
        if !valid_remote_name(&name) {
            continue;
        }
        let existing = config.remote(&name).and_then(|r| r.profile.clone());
        let other = taken
            .get(&name)
            .map(|p| p.to_string())
            .or(existing.filter(|p| p != profile));
        if let Some(other) = other {
            warnings.push(format!(
                "AWS profile '{profile}' skipped: remote {name} is profile '{other}'; name one for it with `skyhaul config set remotes.NAME.profile {profile}`"
            ));
            continue;
        }
        taken.insert(name.clone(), profile);
        if config.remote(&name).is_some() {
            report.push(format!("  = remotes.{name}: already set, kept as it is"));
            continue;
        }
        let mut set = |field: &str, value: &str| {
            config
                .set(&format!("remotes.{name}.{field}"), value)
                .map_err(exit::usage)
        };
        set("type", "s3")?;
        set("provider", "AWS")?;
        set("profile", profile)?;
        if let Some(r) = region {
            set("region", r)?;
        }
        added += 1;
        report.push(format!(
            "  + remotes.{name}: profile {profile}{} (use as {name}:BUCKET/PATH)",
            region
                .as_ref()
                .map_or(String::new(), |r| format!(", region {r}"))
        ));
    }
    match &found.gcp_adc {
        None => report.push("GCP: no application-default credentials found".to_string()),
        Some(p) => {
            let shown = p.display().to_string();
            report.push(record(
                config,
                "gcp_adc_file",
                &shown,
                "GCP application-default credentials",
                &mut added,
            )?);
        }
    }
    if found.azure_env.is_empty() {
        report.push("Azure: no AZURE_* variables set".to_string());
    } else {
        let names = found.azure_env.join(",");
        report.push(record(
            config,
            "azure_env",
            &names,
            "Azure variables",
            &mut added,
        )?);
    }
    Ok(Applied {
        report,
        warnings,
        added,
    })
}

/// Sets `key` to `value` unless it is set already; says which.
fn record(
    config: &mut Config,
    key: &str,
    value: &str,
    what: &str,
    added: &mut usize,
) -> Result<String, CliError> {
    match config.get(key) {
        Some(old) if old == value => Ok(format!("{what}: {value} (= {key}, already recorded)")),
        Some(old) => Ok(format!(
            "{what}: {value} (= {key} is set to {old}: kept as it is)"
        )),
        None => {
            config.set(key, value).map_err(exit::usage)?;
            *added += 1;
            Ok(format!("{what}: {value} (+ {key})"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_from_both_files_with_regions_and_no_other_sections() {
        let home = tempfile::tempdir().unwrap();
        let aws = home.path().join(".aws");
        std::fs::create_dir_all(&aws).unwrap();
        std::fs::write(
            aws.join("config"),
            "[default]\nregion = us-east-1\n[profile prod]\nregion=eu-west-1\n\
             [sso-session corp]\nsso_region = us-east-1\n[services s]\n",
        )
        .unwrap();
        std::fs::write(
            aws.join("credentials"),
            "[default]\naws_access_key_id = AKIAIOSFODNN7EXAMPLE\n[ci]\naws_secret_access_key = x\n",
        )
        .unwrap();
        let found = detect(Some(home.path()), |_| None);
        let names: Vec<&str> = found.aws_profiles.keys().map(String::as_str).collect();
        assert_eq!(names, ["ci", "default", "prod"]);
        assert_eq!(found.aws_profiles["prod"].as_deref(), Some("eu-west-1"));
        assert_eq!(found.aws_profiles["ci"], None);
        assert_eq!(found.gcp_adc, None);
    }

    #[test]
    fn remote_names_are_valid() {
        assert_eq!(remote_name("default"), "aws");
        assert_eq!(remote_name("team.prod/eu"), "aws-team-prod-eu");
        assert!(valid_remote_name(&remote_name("x y")));
    }

    #[test]
    fn applying_twice_adds_nothing_and_keeps_edits() {
        let found = Found {
            aws_profiles: [("default".to_string(), Some("us-east-1".to_string()))].into(),
            gcp_adc: Some(PathBuf::from("/home/u/adc.json")),
            azure_env: vec!["AZURE_STORAGE_ACCOUNT".into()],
            ..Default::default()
        };
        let mut c = Config::default();
        assert_eq!(apply(&found, &mut c).unwrap().added, 3);
        c.set("remotes.aws.region", "us-west-2").unwrap();
        let before = c.clone();
        assert_eq!(apply(&found, &mut c).unwrap().added, 0);
        assert_eq!(c, before);
    }
}
