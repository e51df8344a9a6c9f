//! Relay mode on the command line: `skyhaul gateway` (the destination side) and `--relay`
//! (the source side, which opens the destination as a [`RelayStore`]).

use crate::args::{GatewayArgs, RelayArgs};
use crate::exit::{self, CliError, ExitCode};
use crate::output::Output;
use skyhaul_engine::Endpoint;
use skyhaul_fleet::protocol::RelaySpec;
use skyhaul_location::{Location, Scheme};
use skyhaul_relay::{
    Ended, Gateway, Lifetime, RelayKey, RelayOptions, RelayStore, DEFAULT_CHUNK, KEY_ENV, TLS_ALPN,
};
use skyhaul_store::ErrorKind;
use std::sync::Arc;

/// The transfer key from the environment; relay mode cannot run without one.
fn key() -> Result<RelayKey, CliError> {
    match RelayKey::from_env() {
        Ok(Some(k)) => Ok(k),
        Ok(None) => Err(exit::usage(format!(
            "relay mode needs the transfer key in {KEY_ENV} (64 hex digits, e.g. from `openssl rand -hex 32`), the same at the gateways"
        ))),
        Err(e) => Err(exit::usage(e)),
    }
}

/// Opens `dst` as a store reached through the gateways of `relay`.
pub async fn open_destination(
    dst: &Location,
    relay: &RelayArgs,
) -> Result<(Endpoint, Arc<RelayStore>), CliError> {
    if dst.scheme == Scheme::Local {
        return Err(exit::usage(format!(
            "--relay: the destination {dst} is a local path; relay mode writes to an object store (s3://, gs://, az://) that the gateways reach"
        )));
    }
    let opts = options(relay, &dst.bucket)?;
    let store = Arc::new(RelayStore::connect(opts).await.map_err(|e| match e.kind {
        // The relay's own message says what to check (the gateways, the key, TLS), not
        // --dst-endpoint, which a relayed transfer does not use.
        ErrorKind::Unreachable => CliError {
            code: ExitCode::Unreachable,
            message: e.message,
        },
        _ => exit::store("DST", e),
    })?);
    let endpoint = Endpoint {
        store: store.clone(),
        path: dst.path.clone(),
        display: dst.to_string(),
        locator: dst.to_string(),
    };
    Ok((endpoint, store))
}

/// How to reach the gateways of `relay`, for a transfer into `container`.
fn options(relay: &RelayArgs, container: &str) -> Result<RelayOptions, CliError> {
    Ok(RelayOptions {
        gateways: relay.relay.clone(),
        connections: relay.relay_connections.into(),
        compression: relay.relay_compression,
        chunk_size: DEFAULT_CHUNK,
        key: match &relay.key {
            Some(k) => k.clone(),
            None => key()?,
        },
        container: container.to_string(),
        tls: tls_client(relay)?,
        tls_name: relay.relay_tls_name.clone(),
        congestion: congestion(relay.relay_congestion.as_deref())?,
    })
}

/// The congestion control for the relay's connections: the one asked for, which this
/// system must offer, or (`None`) the system's default.
fn congestion(asked: Option<&str>) -> Result<Option<String>, CliError> {
    match asked {
        None | Some("system") => Ok(None),
        Some(name) => match skyhaul_relay::congestion_available(name) {
            Ok(()) => Ok(Some(name.to_string())),
            Err(e) => Err(exit::usage(format!(
                "--relay-congestion {name}: this system does not offer it ({e}); Linux lists what it has in /proc/sys/net/ipv4/tcp_allowed_congestion_control, or leave the flag out for the system's default"
            ))),
        },
    }
}

/// `skyhaul coordinator --relay-stop-gateways`: tells the gateways the transfer is over. A
/// gateway that cannot be told is a warning, not a failed transfer: the data is there, and
/// its own `--idle-exit` (or its engine) ends it.
pub async fn stop_gateways(relay: &RelayArgs, out: Output) {
    let opts = match options(relay, "") {
        Ok(o) => o,
        Err(e) => return out.warning(&format!("relay gateways not stopped: {}", e.message)),
    };
    for (gateway, answer) in skyhaul_relay::stop_gateways(opts).await {
        match answer {
            Ok(()) => out.notice(&format!("relay gateway {gateway} told to stop")),
            Err(e) => out.warning(&format!(
                "relay gateway {gateway} was not stopped: {}",
                e.message
            )),
        }
    }
}

/// The TLS configuration for the gateways, when the sending side asks for TLS: the
/// system's roots and a CA from `--relay-tls-ca` (or from a worker's coordinator).
fn tls_client(relay: &RelayArgs) -> Result<Option<Arc<skyhaul_tls::ClientConfig>>, CliError> {
    let roots = match (&relay.relay_tls_ca, &relay.tls_ca_pem) {
        (Some(path), _) => skyhaul_tls::ca_certificates(path, "--relay-tls-ca"),
        (None, Some(pem)) => {
            skyhaul_tls::ca_certificates_pem(pem.as_bytes(), "the coordinator's --relay-tls-ca")
        }
        (None, None) if relay.relay_tls || relay.relay_tls_name.is_some() => Ok(Vec::new()),
        (None, None) => return Ok(None),
    }
    .map_err(exit::usage)?;
    skyhaul_tls::client_config(roots, &[TLS_ALPN])
        .map(Some)
        .map_err(exit::usage)
}

/// What a fleet's workers need to relay as the coordinator does: the CA goes as its PEM
/// text (a worker may not have the file), which is public.
pub fn spec(relay: &RelayArgs) -> Result<Option<RelaySpec>, CliError> {
    if relay.relay.is_empty() {
        return Ok(None);
    }
    let tls_ca = match &relay.relay_tls_ca {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| exit::usage(format!("--relay-tls-ca {}: {e}", path.display())))?,
        ),
        None => None,
    };
    Ok(Some(RelaySpec {
        gateways: relay.relay.clone(),
        connections: relay.relay_connections,
        compression: relay.relay_compression.to_string(),
        congestion: relay.relay_congestion.clone(),
        key: key()?.to_hex(),
        tls: relay.relay_tls || tls_ca.is_some() || relay.relay_tls_name.is_some(),
        tls_ca,
        tls_name: relay.relay_tls_name.clone(),
    }))
}

/// The relay settings a worker got from its coordinator (over its authenticated API),
/// the key included.
pub fn from_spec(spec: Option<&RelaySpec>) -> Result<RelayArgs, CliError> {
    let Some(s) = spec else {
        return Ok(RelayArgs::default());
    };
    let key = RelayKey::from_hex(&s.key).map_err(exit::usage)?;
    Ok(RelayArgs {
        key: Some(key),
        relay: s.gateways.clone(),
        relay_connections: s.connections,
        relay_compression: s.compression.parse().map_err(exit::usage)?,
        relay_congestion: s.congestion.clone(),
        relay_tls: s.tls || s.tls_ca.is_some(),
        relay_tls_ca: None,
        relay_tls_name: s.tls_name.clone(),
        tls_ca_pem: s.tls_ca.clone(),
    })
}

/// `skyhaul gateway`: serves one destination store until stopped (a signal; with
/// `--exit-on-stop`, its sender; with `--idle-exit`, no sender for that long).
pub async fn gateway(args: GatewayArgs) -> ExitCode {
    match run_gateway(args).await {
        Ok(()) => ExitCode::Ok,
        Err(e) => {
            eprintln!("skyhaul: error: {}", e.message);
            e.code
        }
    }
}

async fn run_gateway(args: GatewayArgs) -> Result<(), CliError> {
    let key = key()?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            Some(skyhaul_tls::server_config(cert, key, &[TLS_ALPN]).map_err(exit::usage)?)
        }
        _ => None,
    };
    let config = crate::settings::load_config()?;
    let (loc, remote) = crate::location(&args.destination, &config, args.rclone_config.as_deref())?;
    if loc.scheme == Scheme::Local || !loc.path.is_empty() {
        return Err(exit::usage(format!(
            "{}: a gateway serves a whole bucket or container (s3://BUCKET, gs://BUCKET, az://CONTAINER)",
            args.destination
        )));
    }
    let side = crate::side_options(
        "DST",
        args.dst_endpoint.clone(),
        args.dst_profile.clone(),
        args.dst_region.clone(),
        args.requester_pays,
        remote.as_ref(),
        &args.cloud,
    );
    let dst = skyhaul_engine::open_destination(&loc, &side, true, true)
        .await
        .map_err(|e| exit::store("DST", e))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| exit::usage(format!("--listen {}: {e}", args.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| exit::usage(format!("--listen {}: {e}", args.listen)))?;
    let over = if tls.is_some() { " (TLS)" } else { "" };
    eprintln!("skyhaul: relay gateway for {loc} listening on {addr}{over}");
    let lifetime = Lifetime {
        exit_on_stop: args.exit_on_stop,
        idle_exit: args.idle_exit,
    };
    let gateway = Gateway::new(dst.store, key, tls, lifetime);
    let ended = tokio::select! {
        ended = gateway.serve(listener) => ended,
        _ = tokio::signal::ctrl_c() => return Ok(()),
    };
    match ended {
        Ended::Stopped => eprintln!("skyhaul: relay gateway stopped: the transfer is over"),
        Ended::Idle(d) => eprintln!(
            "skyhaul: relay gateway exiting: no relay connection for {} s (--idle-exit)",
            d.as_secs()
        ),
    }
    Ok(())
}
