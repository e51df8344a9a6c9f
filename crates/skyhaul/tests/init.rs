//! `skyhaul init` with a fake home directory: what it finds, what it writes (never a
//! secret), and that running it again changes nothing the user edited.

mod common;

use common::*;
use std::path::Path;

const AWS_KEY_ID: &str = "AKIAIOSFODNN7EXAMPLE";
const AWS_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
const GCP_SECRET: &str = "d-FL95Q19q7MQmFpd7hHD0Ty";
const AZURE_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsu";

/// `skyhaul init EXTRA` with `home` as the home directory, where every file it looks for
/// has its default location (the variables that could move them are empty), and `env`.
fn init_env(home: &Path, extra: &[&str], env: &[(&str, &str)]) -> Run {
    let mut args = vec!["init"];
    args.extend(extra);
    let mut vars = vec![
        ("HOME", home.to_str().unwrap()),
        ("SKYHAUL_CONFIG", ""),
        ("XDG_CONFIG_HOME", ""),
        ("AWS_CONFIG_FILE", ""),
        ("AWS_SHARED_CREDENTIALS_FILE", ""),
        ("GOOGLE_APPLICATION_CREDENTIALS", ""),
        ("CLOUDSDK_CONFIG", ""),
    ];
    vars.extend(env);
    skyhaul_env(&args, None, None, &vars)
}

/// [`init_env`] with two Azure variables set.
fn init(home: &Path, extra: &[&str]) -> Run {
    init_env(
        home,
        extra,
        &[
            ("AZURE_STORAGE_ACCOUNT", "devaccount"),
            ("AZURE_STORAGE_KEY", AZURE_KEY),
        ],
    )
}

fn config_get(home: &Path, key: &str) -> Option<String> {
    let path = home.join(".config/skyhaul/config.toml");
    let run = skyhaul_env(
        &["config", "get", key],
        None,
        None,
        &[("SKYHAUL_CONFIG", path.to_str().unwrap())],
    );
    (run.code == 0).then(|| run.stdout.trim().to_string())
}

fn fake_home(root: &Path) {
    let aws = root.join(".aws");
    std::fs::create_dir_all(&aws).unwrap();
    std::fs::write(
        aws.join("config"),
        "[default]\nregion = us-east-1\n\n[profile prod]\nregion = eu-west-1\n\
         [sso-session corp]\nsso_start_url = https://corp.awsapps.com/start\n",
    )
    .unwrap();
    std::fs::write(
        aws.join("credentials"),
        format!(
            "[default]\naws_access_key_id = {AWS_KEY_ID}\naws_secret_access_key = {AWS_SECRET}\n\
             [ci]\naws_access_key_id = {AWS_KEY_ID}\naws_secret_access_key = {AWS_SECRET}\n"
        ),
    )
    .unwrap();
    let gcloud = root.join(".config/gcloud");
    std::fs::create_dir_all(&gcloud).unwrap();
    std::fs::write(
        gcloud.join("application_default_credentials.json"),
        format!(
            r#"{{"client_id": "x", "client_secret": "{GCP_SECRET}", "type": "authorized_user"}}"#
        ),
    )
    .unwrap();
}

fn assert_no_secrets(what: &str, text: &str) {
    for secret in [AWS_KEY_ID, AWS_SECRET, GCP_SECRET, AZURE_KEY] {
        assert!(!text.contains(secret), "{what} contains a secret:\n{text}");
    }
}

#[test]
fn init_records_what_it_finds_without_secrets_and_is_rerunnable() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    fake_home(home);
    let config = home.join(".config/skyhaul/config.toml");

    // --dry-run shows, writes nothing.
    let dry = init(home, &["--dry-run"]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert!(
        dry.stdout.contains("would record 5 settings"),
        "{}",
        dry.stdout
    );
    assert!(!config.exists());

    let first = init(home, &[]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert!(
        first.stdout.contains("recorded 5 settings"),
        "{}",
        first.stdout
    );
    assert_eq!(
        config_get(home, "remotes.aws.profile").as_deref(),
        Some("default")
    );
    assert_eq!(
        config_get(home, "remotes.aws.region").as_deref(),
        Some("us-east-1")
    );
    assert_eq!(
        config_get(home, "remotes.aws-prod.region").as_deref(),
        Some("eu-west-1")
    );
    assert_eq!(
        config_get(home, "remotes.aws-ci.profile").as_deref(),
        Some("ci")
    );
    assert_eq!(config_get(home, "remotes.aws-ci.region"), None);
    assert_eq!(
        config_get(home, "remotes.aws-corp.profile"),
        None,
        "not a profile"
    );
    let adc = home.join(".config/gcloud/application_default_credentials.json");
    assert_eq!(
        config_get(home, "gcp_adc_file"),
        Some(adc.display().to_string())
    );
    assert_eq!(
        config_get(home, "azure_env").as_deref(),
        Some("AZURE_STORAGE_ACCOUNT,AZURE_STORAGE_KEY")
    );
    let written = std::fs::read_to_string(&config).unwrap();
    for (what, text) in [
        ("the config file", &written),
        ("stdout", &first.stdout),
        ("stderr", &first.stderr),
    ] {
        assert_no_secrets(what, text);
    }

    // Again: nothing new, the file is not even rewritten.
    let modified = std::fs::metadata(&config).unwrap().modified().unwrap();
    let again = init(home, &[]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(
        again.stdout.contains("nothing new to record"),
        "{}",
        again.stdout
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), written);
    assert_eq!(
        std::fs::metadata(&config).unwrap().modified().unwrap(),
        modified
    );

    // The user edits a remote; a new profile appears. Init adds it and keeps the edit.
    let set = skyhaul_env(
        &["config", "set", "remotes.aws.region", "us-west-2"],
        None,
        None,
        &[("SKYHAUL_CONFIG", config.to_str().unwrap())],
    );
    assert_eq!(set.code, 0, "{}", set.stderr);
    let aws_config = home.join(".aws/config");
    let mut text = std::fs::read_to_string(&aws_config).unwrap();
    text.push_str("[profile new]\nregion = ap-south-1\n");
    std::fs::write(&aws_config, text).unwrap();
    let third = init(home, &[]);
    assert_eq!(third.code, 0, "{}", third.stderr);
    assert!(
        third.stdout.contains("recorded 1 settings"),
        "{}",
        third.stdout
    );
    assert_eq!(
        config_get(home, "remotes.aws.region").as_deref(),
        Some("us-west-2")
    );
    assert_eq!(
        config_get(home, "remotes.aws-new.region").as_deref(),
        Some("ap-south-1")
    );
    assert_no_secrets(
        "the config file",
        &std::fs::read_to_string(&config).unwrap(),
    );
}

#[test]
fn init_on_an_empty_home_says_what_it_looked_for() {
    let tmp = tempfile::tempdir().unwrap();
    let run = init_env(tmp.path(), &[], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("AWS: no profiles found"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("GCP: no application-default credentials"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("nothing new to record"),
        "{}",
        run.stdout
    );
    assert!(!tmp.path().join(".config/skyhaul/config.toml").exists());
}

/// Profiles the AWS SDK itself ignores (a space or a non-ASCII letter in the name) are
/// skipped with a warning, and the others recorded; two profiles that would make one
/// remote name are not reported as "already set": the second is skipped, with a warning
/// naming both, on every run.
#[test]
fn init_skips_profiles_it_cannot_record_and_records_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    std::fs::create_dir_all(home.join(".aws")).unwrap();
    std::fs::write(
        home.join(".aws/config"),
        "[default]\nregion = us-east-1\n\n[profile prod]\nregion = eu-west-1\n\n\
         [profile my laptop]\nregion = us-west-2\n\n[profile ünicode]\nregion = us-west-1\n\n\
         [profile dotted.name]\nregion = eu-north-1\n\n[profile dotted-name]\nregion = eu-south-1\n",
    )
    .unwrap();
    for extra in [&["--dry-run"][..], &[], &[]] {
        let run = init_env(home, extra, &[]);
        assert_eq!(run.code, 0, "{extra:?}: {}", run.stderr);
        for warning in [
            "warning: AWS profile 'my laptop' skipped: the AWS SDK ignores it",
            "warning: AWS profile 'ünicode' skipped: the AWS SDK ignores it",
            "warning: AWS profile 'dotted.name' skipped: remote aws-dotted-name is profile 'dotted-name'",
        ] {
            assert!(run.stderr.contains(warning), "{extra:?}: {}", run.stderr);
        }
        // One line for the remote: its own profile's, not the skipped one's.
        assert_eq!(
            run.stdout.matches("remotes.aws-dotted-name").count(),
            1,
            "{}",
            run.stdout
        );
    }
    assert_eq!(
        config_get(home, "remotes.aws.region").as_deref(),
        Some("us-east-1")
    );
    assert_eq!(
        config_get(home, "remotes.aws-prod.region").as_deref(),
        Some("eu-west-1")
    );
    assert_eq!(
        config_get(home, "remotes.aws-dotted-name.profile").as_deref(),
        Some("dotted-name")
    );
    let config = std::fs::read_to_string(home.join(".config/skyhaul/config.toml")).unwrap();
    assert!(
        !config.contains("laptop") && !config.contains("nicode"),
        "{config}"
    );
}

/// `$AWS_CONFIG_FILE` and `$AWS_SHARED_CREDENTIALS_FILE` are what init reads, and what it
/// names when it finds nothing; one that cannot be read (a directory) is named in a warning.
#[test]
fn init_names_the_aws_files_it_looked_at() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("elsewhere/config");
    let credentials = tmp.path().join("elsewhere/credentials");
    let run = init_env(
        tmp.path(),
        &[],
        &[
            ("AWS_CONFIG_FILE", config.to_str().unwrap()),
            ("AWS_SHARED_CREDENTIALS_FILE", credentials.to_str().unwrap()),
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains(&format!(
            "AWS: no profiles found ({}, {})",
            config.display(),
            credentials.display()
        )),
        "{}",
        run.stdout
    );
    let dir = tmp.path();
    let run = init_env(dir, &[], &[("AWS_CONFIG_FILE", dir.to_str().unwrap())]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("warning: cannot read {}: ", dir.display())),
        "{}",
        run.stderr
    );
}
