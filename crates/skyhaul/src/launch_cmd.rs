//! `skyhaul launch`: writes (and submits) a job that runs a fleet on an existing engine.

use crate::args::{BackendArg, Cli, LaunchArgs};
use crate::exit::{self, CliError, ExitCode};
use crate::output::Output;
use clap::Parser;
use skyhaul_fleet::launch::{Backend, Job};
use std::path::PathBuf;
use std::process::Command;

pub fn run(args: LaunchArgs) -> ExitCode {
    let out = Output::new(false, false);
    match launch(args, out) {
        Ok(code) => code,
        Err(e) => {
            out.error(&e.message, e.code);
            e.code
        }
    }
}

fn launch(args: LaunchArgs, out: Output) -> Result<ExitCode, CliError> {
    // The transfer must be one `skyhaul coordinator` accepts: check it here, not on the nodes.
    let mut argv = vec!["skyhaul", "coordinator", "--listen", "0.0.0.0:1"];
    argv.extend(args.transfer.iter().map(String::as_str));
    if let Err(e) = Cli::try_parse_from(&argv) {
        // clap's first line, with the argument it names on the next one when there is one.
        let text = e.to_string();
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let mut first = lines
            .first()
            .unwrap_or(&"invalid transfer")
            .trim_start_matches("error: ")
            .to_string();
        if first.ends_with(':') {
            if let Some(next) = lines.get(1) {
                first = format!("{first} {next}");
            }
        }
        return Err(exit::usage(format!(
            "the transfer after the launch options is not valid for `skyhaul coordinator`: {first}"
        )));
    }
    if args.name.is_empty()
        || !args
            .name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(exit::usage(format!(
            "--name {}: use lowercase letters, digits and - (it names pods and files)",
            args.name
        )));
    }
    let (backend, ext, submit) = match args.backend {
        BackendArg::Slurm => (Backend::Slurm, "sbatch", "sbatch"),
        BackendArg::Skypilot => (Backend::Skypilot, "sky.yaml", "sky"),
        BackendArg::Kubernetes => (Backend::Kubernetes, "k8s.yaml", "kubectl"),
        BackendArg::Ssh => (Backend::Ssh, "sh", "bash"),
    };
    let nodes = match backend {
        Backend::Ssh if args.hosts.is_empty() => {
            return Err(exit::usage("--backend ssh needs --hosts h1,h2,..."))
        }
        Backend::Ssh => args.hosts.len() as u32,
        _ => args.nodes.unwrap_or(2),
    };
    let image = match (backend, &args.image) {
        (Backend::Kubernetes, None) => {
            return Err(exit::usage(
                "--backend kubernetes needs --image (an image with skyhaul)",
            ))
        }
        (_, i) => i.clone().unwrap_or_default(),
    };
    let job = Job {
        nodes,
        port: args.port,
        name: args.name.clone(),
        transfer: args.transfer,
        skyhaul: args.skyhaul,
        image,
        secret: args.secret,
        spot: args.spot,
        cpus: args.cpus,
        hosts: args.hosts,
    };
    let path = args
        .output
        .unwrap_or_else(|| PathBuf::from(format!("{}.{ext}", args.name)));
    std::fs::write(&path, job.render(backend))
        .map_err(|e| exit::usage(format!("{}: {e}", path.display())))?;
    out.notice(&format!("wrote {}", path.display()));
    if !args.submit {
        return Ok(ExitCode::Ok);
    }
    let file = path.to_string_lossy().into_owned();
    let mut cmd = Command::new(submit);
    match backend {
        Backend::Slurm | Backend::Ssh => cmd.arg(&file),
        Backend::Skypilot => {
            cmd.args(["launch", "-y", "-c", &job.name, &file]);
            for v in job.secrets() {
                if std::env::var_os(v).is_some() {
                    cmd.args(["--secret", v]);
                }
            }
            &mut cmd
        }
        Backend::Kubernetes => cmd.args(["apply", "-f", &file]),
    };
    match cmd.status() {
        Ok(s) if s.success() => Ok(ExitCode::Ok),
        Ok(s) => Err(CliError {
            code: ExitCode::PartialFailure,
            message: format!("{submit} failed ({s}); the job file is {file}"),
        }),
        Err(e) => Err(CliError {
            code: ExitCode::Usage,
            message: format!("--submit: cannot run {submit} ({e}); the job file is {file}"),
        }),
    }
}
