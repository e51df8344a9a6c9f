//! Turning the command line, the environment and the config file into engine options.
//!
//! Every transfer setting is resolved in one order: **flag > environment variable
//! (`SKYHAUL_*`) > config file (`skyhaul config`) > built-in default**. The flags therefore
//! carry no clap defaults; the defaults live here.

use crate::args::{CloudArgs, FilterArgs, TransferArgs, VerifyArg};
use crate::config::Config;
use crate::exit::{self, CliError};
use crate::size::{Rate, Size};
use skyhaul_cloud::{AzureOptions, GcsOptions};
use skyhaul_engine::filter::parse_age_or_time;
use skyhaul_engine::{Filter, FilterBuilder, VerifyMode};
use std::str::FromStr;
use std::time::SystemTime;

pub const DEFAULT_MAX_CONNECTIONS: u16 = 64;
pub const DEFAULT_MEMORY_BUDGET: u64 = 256 << 20;
pub const DEFAULT_PART_SIZE: u64 = 16 << 20;
pub const DEFAULT_MULTIPART_THRESHOLD: u64 = 32 << 20;
pub const DEFAULT_RETRIES: u32 = 10;

/// The transfer settings after precedence was applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Tuning {
    pub max_connections: u16,
    pub memory_budget: u64,
    pub part_size: u64,
    pub multipart_threshold: u64,
    pub retries: u32,
    pub verify: VerifyMode,
    /// `--bwlimit` in bytes per second; `None` for no limit.
    pub bwlimit: Option<u64>,
}

/// Loads the config file (`$SKYHAUL_CONFIG` or the user's config directory); a missing
/// file is an empty configuration, a broken one a usage error that names it.
pub fn load_config() -> Result<Config, CliError> {
    let path = Config::default_path().map_err(exit::usage)?;
    Config::load(&path).map_err(exit::usage)
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// flag > `$var` > config > default, with the environment value parsed by `parse`.
fn pick<T>(
    flag: Option<T>,
    var: &str,
    parse: impl Fn(&str) -> Option<T>,
    config: Option<T>,
    default: T,
) -> Result<T, CliError> {
    if let Some(v) = flag {
        return Ok(v);
    }
    if let Some(raw) = env(var) {
        return parse(raw.trim()).ok_or_else(|| {
            exit::usage(format!(
                "{var}={raw}: not a valid value (unset it, or see `skyhaul cp --help` for its values)"
            ))
        });
    }
    Ok(config.unwrap_or(default))
}

fn verify_mode(v: VerifyArg) -> VerifyMode {
    match v {
        VerifyArg::None => VerifyMode::None,
        VerifyArg::Size => VerifyMode::Size,
        VerifyArg::Checksum => VerifyMode::Checksum,
        VerifyArg::Deep => VerifyMode::Deep,
    }
}

fn parse_verify(s: &str) -> Option<VerifyMode> {
    <VerifyArg as clap::ValueEnum>::from_str(s, true)
        .ok()
        .map(verify_mode)
}

/// A size greater than 0, as the flags and `skyhaul config set` take it.
fn parse_size(s: &str) -> Option<u64> {
    Size::from_str(s).ok().map(|s| s.0).filter(|n| *n > 0)
}

/// The variables [`tuning`] reads, each with its flag (which `launch` names when a job's
/// machines will not get the variable).
pub const TUNING_ENV: [(&str, &str); 7] = [
    ("SKYHAUL_MAX_CONNECTIONS", "--max-connections"),
    ("SKYHAUL_MEMORY_BUDGET", "--memory-budget"),
    ("SKYHAUL_PART_SIZE", "--part-size"),
    ("SKYHAUL_MULTIPART_THRESHOLD", "--multipart-threshold"),
    ("SKYHAUL_RETRIES", "--retries"),
    ("SKYHAUL_VERIFY", "--verify"),
    ("SKYHAUL_BWLIMIT", "--bwlimit"),
];

pub fn tuning(args: &TransferArgs, config: &Config) -> Result<Tuning, CliError> {
    Ok(Tuning {
        max_connections: pick(
            args.max_connections,
            "SKYHAUL_MAX_CONNECTIONS",
            |s| s.parse().ok().filter(|n| *n >= 1),
            config.max_connections(),
            DEFAULT_MAX_CONNECTIONS,
        )?,
        memory_budget: pick(
            args.memory_budget.map(|s| s.0),
            "SKYHAUL_MEMORY_BUDGET",
            parse_size,
            config.memory_budget(),
            DEFAULT_MEMORY_BUDGET,
        )?,
        part_size: pick(
            args.part_size.map(|s| s.0),
            "SKYHAUL_PART_SIZE",
            parse_size,
            config.part_size(),
            DEFAULT_PART_SIZE,
        )?,
        multipart_threshold: pick(
            args.multipart_threshold.map(|s| s.0),
            "SKYHAUL_MULTIPART_THRESHOLD",
            parse_size,
            config.multipart_threshold(),
            DEFAULT_MULTIPART_THRESHOLD,
        )?,
        retries: pick(
            args.retries,
            "SKYHAUL_RETRIES",
            |s| s.parse().ok(),
            config.retries(),
            DEFAULT_RETRIES,
        )?,
        verify: pick(
            args.verify.map(verify_mode),
            "SKYHAUL_VERIFY",
            parse_verify,
            config.verify().and_then(parse_verify),
            VerifyMode::Checksum,
        )?,
        bwlimit: pick(
            args.bwlimit.map(|r| Some(r.0)),
            "SKYHAUL_BWLIMIT",
            |s| s.parse::<Rate>().ok().map(|r| Some(r.0)),
            config.bwlimit().map(Some),
            None,
        )?,
    })
}

/// The journal path: `--journal` > `$SKYHAUL_JOURNAL` > config `journal` > the default
/// (`None` here: the journal crate knows it).
pub fn journal_path(flag: Option<&std::path::Path>, config: &Config) -> Option<std::path::PathBuf> {
    if let Some(p) = flag {
        return Some(p.to_path_buf());
    }
    if env("SKYHAUL_JOURNAL").is_some() {
        return None;
    }
    config.journal()
}

/// One side's GCS and Azure options from its flags (clap has already applied the
/// `SKYHAUL_{SIDE}_*` variables); `endpoint` is the side's `--src/dst-endpoint`, which
/// serves every kind of store. The providers' own variables (`STORAGE_EMULATOR_HOST`,
/// `AZURE_STORAGE_*`, `GOOGLE_APPLICATION_CREDENTIALS`) are read by the backends.
pub fn cloud_options(
    side: &str,
    endpoint: Option<String>,
    c: &CloudArgs,
) -> (GcsOptions, AzureOptions) {
    let src = side == "SRC";
    let pick = |s: &Option<String>, d: &Option<String>| if src { s.clone() } else { d.clone() };
    let gcs = GcsOptions {
        endpoint: endpoint.clone(),
        service_account: if src {
            c.src_gcs_service_account.clone()
        } else {
            c.dst_gcs_service_account.clone()
        },
        anonymous: false,
    };
    let azure = AzureOptions {
        endpoint,
        account: pick(&c.src_azure_account, &c.dst_azure_account),
        key: pick(&c.src_azure_key, &c.dst_azure_key),
        sas: pick(&c.src_azure_sas, &c.dst_azure_sas),
        connection_string: pick(
            &c.src_azure_connection_string,
            &c.dst_azure_connection_string,
        ),
        anonymous: false,
    };
    (gcs, azure)
}

/// `--storage-class`, checked against the classes the destination has where it has a
/// fixed set, and spelt as it spells them (`cool` → `Cool`): a name it does not have is
/// refused before anything is sent, not once per object after its bytes.
pub fn storage_class(class: &str, dst: &dyn skyhaul_store::Store) -> Result<String, CliError> {
    let Some(classes) = dst.storage_classes() else {
        return Ok(class.to_string());
    };
    classes
        .iter()
        .find(|c| c.eq_ignore_ascii_case(class))
        .map(|c| c.to_string())
        .ok_or_else(|| {
            exit::usage(format!(
                "--storage-class {class}: {} has the classes {}",
                dst.name(),
                classes.join(", ")
            ))
        })
}

/// Builds the filter, and the stable description of it that goes into the transfer's
/// identity in the journal (empty without filters). Ages are kept as typed (`7d`), so a
/// rerun of the same command is the same transfer; `--files-from` files count by content.
pub fn filter(args: &FilterArgs) -> Result<(Filter, String), CliError> {
    let mut b = FilterBuilder::new();
    let mut id = Vec::new();
    for g in &args.include {
        b.include(g)
            .map_err(|e| exit::usage(format!("--include: {e}")))?;
        id.push(format!("include={g:?}"));
    }
    for g in &args.exclude {
        b.exclude(g)
            .map_err(|e| exit::usage(format!("--exclude: {e}")))?;
        id.push(format!("exclude={g:?}"));
    }
    for f in &args.files_from {
        b.files_from(f).map_err(exit::usage)?;
        let text = std::fs::read(f).unwrap_or_default();
        id.push(format!(
            "files-from={:?}#{}:{:016x}",
            f.display().to_string(),
            text.len(),
            fnv1a(&text)
        ));
    }
    if let Some(s) = args.min_size {
        b.min_size(s.0);
        id.push(format!("min-size={}", s.0));
    }
    if let Some(s) = args.max_size {
        b.max_size(s.0);
        id.push(format!("max-size={}", s.0));
    }
    let now = SystemTime::now();
    if let Some(t) = &args.newer_than {
        b.newer_than(
            parse_age_or_time(t, now).map_err(|e| exit::usage(format!("--newer-than {e}")))?,
        );
        id.push(format!("newer-than={t:?}"));
    }
    if let Some(t) = &args.older_than {
        b.older_than(
            parse_age_or_time(t, now).map_err(|e| exit::usage(format!("--older-than {e}")))?,
        );
        id.push(format!("older-than={t:?}"));
    }
    Ok((b.build(), id.join(" ")))
}

/// A stable 64-bit hash (FNV-1a): the same file gives the same identity on every run and
/// every build, which `std`'s hasher does not promise.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_flag_env_config_default() {
        // The environment is process-wide: one test covers every step for one variable.
        let var = "SKYHAUL_TEST_ONLY_SETTING";
        let parse = |s: &str| s.parse::<u32>().ok();
        std::env::remove_var(var);
        assert_eq!(pick(None, var, parse, None, 10).unwrap(), 10);
        assert_eq!(pick(None, var, parse, Some(3), 10).unwrap(), 3);
        std::env::set_var(var, "5");
        assert_eq!(pick(None, var, parse, Some(3), 10).unwrap(), 5);
        assert_eq!(pick(Some(7), var, parse, Some(3), 10).unwrap(), 7);
        std::env::set_var(var, "five");
        assert!(pick(None, var, parse, Some(3), 10).is_err());
        std::env::remove_var(var);
    }

    #[test]
    fn filter_identity_is_stable_and_empty_without_filters() {
        let (f, id) = filter(&FilterArgs::default()).unwrap();
        assert!(f.is_empty());
        assert_eq!(id, "");
        let args = FilterArgs {
            include: vec!["*.csv".into()],
            exclude: vec!["tmp/**".into()],
            newer_than: Some("7d".into()),
            ..Default::default()
        };
        let (_, a) = filter(&args).unwrap();
        let (_, b) = filter(&args).unwrap();
        assert_eq!(a, b);
        assert!(a.contains("include=\"*.csv\"") && a.contains("newer-than=\"7d\""));
    }

    #[test]
    fn bad_filters_are_usage_errors() {
        let args = FilterArgs {
            newer_than: Some("yesterday".into()),
            ..Default::default()
        };
        let e = filter(&args).unwrap_err();
        assert_eq!(e.code, crate::exit::ExitCode::Usage);
    }
}
