//! `skyhaul config get|set|list|unset|path`.

use crate::args::{ConfigAction, ConfigArgs};
use crate::config::{validate_key, Config};
use crate::exit::{self, ExitCode};
use crate::output::outln;

pub fn run(args: ConfigArgs) -> ExitCode {
    match run_inner(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("skyhaul: error: {}", e.message);
            e.code
        }
    }
}

fn run_inner(args: ConfigArgs) -> Result<ExitCode, exit::CliError> {
    let path = Config::default_path().map_err(exit::usage)?;
    // The path, without reading the file: it is how a broken file is found to be fixed.
    if let ConfigAction::Path = args.action {
        outln!("{}", path.display());
        return Ok(ExitCode::Ok);
    }
    let mut config = Config::load(&path).map_err(exit::usage)?;
    match args.action {
        ConfigAction::Get { key } => {
            validate_key(&key).map_err(exit::usage)?;
            match config.get(&key) {
                Some(v) => {
                    outln!("{v}");
                    Ok(ExitCode::Ok)
                }
                None => Ok(ExitCode::PartialFailure),
            }
        }
        ConfigAction::Set { key, value } => {
            config.set(&key, &value).map_err(exit::usage)?;
            config.save(&path).map_err(|e| exit::CliError {
                code: ExitCode::PartialFailure,
                message: e.to_string(),
            })?;
            Ok(ExitCode::Ok)
        }
        ConfigAction::Unset { key } => {
            if config.unset(&key).map_err(exit::usage)? {
                config.save(&path).map_err(|e| exit::CliError {
                    code: ExitCode::PartialFailure,
                    message: e.to_string(),
                })?;
            }
            Ok(ExitCode::Ok)
        }
        ConfigAction::List { json } => {
            let items = config.list();
            if json {
                let map: serde_json::Map<String, serde_json::Value> = items
                    .into_iter()
                    .map(|(k, v)| (k, serde_json::Value::String(v)))
                    .collect();
                outln!("{}", serde_json::Value::Object(map));
            } else {
                for (k, v) in items {
                    outln!("{k} = {v}");
                }
            }
            Ok(ExitCode::Ok)
        }
        ConfigAction::Path => unreachable!("answered before the file is read"),
    }
}
