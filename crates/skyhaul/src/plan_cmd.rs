//! `skyhaul plan SRC DST [-r]`: what a transfer would move, how long it should take, and
//! what it would cost, before anything moves.
//!
//! The objects and bytes come from the engine's own planning (the dry run: the same
//! listing, filters and sync comparison as the real transfer), and the requests from the
//! same part sizing the copy uses, so the plan and the transfer cannot disagree on what is
//! copied. Prices come from `prices.rs`, places from `place.rs`, the arithmetic from
//! `estimate.rs`.

use crate::args::{PlanArgs, TransferArgs};
use crate::estimate::{self, Egress, Requests};
use crate::events::SCHEMA;
use crate::exit::{self, CliError, ExitCode};
use crate::output::outln;
use crate::output::Output;
use crate::place::{self, Clues, Place};
use crate::prices::Prices;
use crate::{remotes, settings};
use serde::Serialize;
use skyhaul_engine::report::{human_bytes, thousands};
use skyhaul_engine::{part_size, Compare, Endpoint, Job, Mode, Progress, TransferOptions};
use skyhaul_store::ObjectMeta;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// `--throughput`'s default when there is no `--bwlimit` either: 1 GiB/s, what one
/// machine with a 10 Gbit/s link moves when the stores keep up.
const DEFAULT_THROUGHPUT: u64 = 1 << 30;

/// The plan, as `--json` prints it (one `plan` event).
#[derive(Debug, Serialize)]
struct Plan {
    schema: u32,
    event: &'static str,
    source: String,
    destination: String,
    objects: u64,
    bytes: u64,
    /// Left out: an earlier, interrupted run of the same transfer copied them.
    objects_resumed: u64,
    deletes: u64,
    /// Copies the store makes itself (same endpoint and account): no bytes cross here.
    server_side: bool,
    requests: Requests,
    throughput_bytes_per_second: u64,
    estimated_seconds: f64,
    source_place: Place,
    destination_place: Place,
    egress: Egress,
    source_requests_cost: Option<f64>,
    destination_requests_cost: Option<f64>,
    /// Egress plus requests; `null` when any part is unknown.
    total_cost: Option<f64>,
    currency: String,
    prices_as_of: String,
    prices_source: String,
}

pub async fn run(args: PlanArgs) -> ExitCode {
    let common = &args.common;
    let out = Output::new(common.output.quiet, common.output.json);
    match plan(&args, common, out).await {
        Ok(()) => ExitCode::Ok,
        Err(e) => {
            out.error(&e.message, e.code);
            e.code
        }
    }
}

async fn plan(args: &PlanArgs, common: &TransferArgs, out: Output) -> Result<(), CliError> {
    let config = settings::load_config()?;
    let prices_file = args.prices.clone().or_else(|| config.prices());
    let prices = Prices::load(prices_file.as_deref()).map_err(exit::usage)?;
    let tuning = settings::tuning(common, &config)?;
    let (filter, filter_identity) = settings::filter(&common.filter)?;
    let rclone = common.endpoints.rclone_config.as_deref();
    let (src_loc, src_remote) = crate::location(&common.src, &config, rclone)?;
    let (dst_loc, dst_remote) = crate::location(&common.dst, &config, rclone)?;
    let (src, dst, _) = crate::open_both(
        &common.src,
        &common.dst,
        &common.endpoints,
        args.recursive,
        crate::Access::Read,
    )
    .await?;
    let mode = if args.sync {
        Mode::Sync {
            delete: args.delete,
            compare: Compare::SizeAndTime,
        }
    } else {
        Mode::Copy
    };
    let opts = TransferOptions {
        mode,
        recursive: args.recursive,
        part_size: tuning.part_size,
        multipart_threshold: tuning.multipart_threshold,
        filter: Arc::new(filter),
        filter_identity,
        ..Default::default()
    };
    let server_side = !common.no_server_side_copy
        && matches!((src.store.copy_domain(), dst.store.copy_domain()), (Some(a), Some(b)) if a == b);
    let src_local = src_loc.scheme == skyhaul_location::Scheme::Local;
    let dst_local = dst_loc.scheme == skyhaul_location::Scheme::Local;
    let progress = Arc::new(Progress::default());
    let mut tally = Tally {
        src_local,
        dst_local,
        ..Default::default()
    };
    // What an interrupted run of this transfer copied is left out, as its rerun leaves it
    // out (and as a dry run does); the journal is read, never made or written.
    let journal = crate::journal_cmds::existing(common, &config);
    skyhaul_engine::dry_run(
        &src,
        &dst,
        &opts,
        progress.clone(),
        CancellationToken::new(),
        journal.as_ref(),
        |job| tally.add(job, &dst, &opts, server_side),
    )
    .await
    .map_err(|e| exit::store(exit::side_of(&e, &src, &dst), e))?;

    let snapshot = progress.snapshot();
    let listed = snapshot.objects_total + snapshot.objects_skipped;
    let pages = listed.div_ceil(1000).max(1);
    let mut requests = tally.requests;
    match (src_local, args.recursive) {
        (true, _) => {}
        (false, true) => requests.src_list = pages,
        (false, false) => requests.src_get += 1, // the HEAD that finds the one object
    }
    let verify_lists = tuning.verify != skyhaul_engine::VerifyMode::None && tally.objects > 0;
    if args.recursive && !dst_local && (args.sync || verify_lists) {
        requests.dst_list = pages * (u64::from(args.sync) + u64::from(verify_lists));
    }
    let side = |cloud: Option<&str>,
                region: Option<&str>,
                endpoint: Option<&str>,
                remote: Option<&remotes::ResolvedRemote>,
                loc: &skyhaul_location::Location| {
        place::locate(Clues {
            cloud_flag: cloud,
            region: region.or_else(|| remote.and_then(|r| r.region.as_deref())),
            endpoint: endpoint.or_else(|| remote.and_then(|r| r.endpoint.as_deref())),
            remote_provider: remote.and_then(|r| r.provider.as_deref()),
            scheme_provider: match loc.scheme {
                skyhaul_location::Scheme::Gcs => Some("gcp"),
                skyhaul_location::Scheme::Azure => Some("azure"),
                _ => None,
            },
            local: loc.scheme == skyhaul_location::Scheme::Local,
        })
    };
    let e = &common.endpoints;
    let src_place = side(
        args.src_cloud.as_deref(),
        e.src_region.as_deref(),
        e.src_endpoint.as_deref(),
        src_remote.as_ref(),
        &src_loc,
    );
    let dst_place = side(
        args.dst_cloud.as_deref(),
        e.dst_region.as_deref(),
        e.dst_endpoint.as_deref(),
        dst_remote.as_ref(),
        &dst_loc,
    );
    let egress = estimate::egress(&prices, &src_place, &dst_place, tally.bytes);
    let src_cost =
        estimate::request_cost(&prices, &src_place, requests.src_list, requests.src_get, 0);
    let dst_cost =
        estimate::request_cost(&prices, &dst_place, requests.dst_list, 0, requests.dst_put);
    let total = match (egress.cost, src_cost, dst_cost) {
        (Some(a), Some(b), Some(c)) => Some(a + b + c),
        _ => None,
    };
    let throughput = args
        .throughput
        .map(|r| r.0)
        .or(tuning.bwlimit)
        .unwrap_or(DEFAULT_THROUGHPUT);
    let moved = if server_side { 0 } else { tally.bytes };
    let plan = Plan {
        schema: SCHEMA,
        event: "plan",
        source: src.display.clone(),
        destination: dst.display.clone(),
        objects: tally.objects,
        bytes: tally.bytes,
        objects_resumed: snapshot.objects_resumed,
        deletes: requests.dst_delete,
        server_side,
        requests,
        throughput_bytes_per_second: throughput,
        estimated_seconds: estimate::seconds(
            moved,
            requests.total(),
            throughput,
            tuning.max_connections,
        ),
        source_place: src_place,
        destination_place: dst_place,
        egress,
        source_requests_cost: src_cost,
        destination_requests_cost: dst_cost,
        total_cost: total,
        currency: prices.meta.currency.clone(),
        prices_as_of: prices.meta.as_of.clone(),
        prices_source: prices_file.map_or_else(
            || "built-in table".to_string(),
            |p| format!("built-in table with {} laid over it", p.display()),
        ),
    };
    if out.json() {
        outln!("{}", serde_json::to_string(&plan).expect("plan serialises"));
    } else {
        crate::output::write_stdout(&text(&plan));
    }
    Ok(())
}

/// What the jobs add up to. A local side sends no requests anyone bills.
#[derive(Default)]
struct Tally {
    objects: u64,
    bytes: u64,
    requests: Requests,
    src_local: bool,
    dst_local: bool,
}

impl Tally {
    /// Counts one job's requests as the engine sends them (see `run.rs`: one GET and PUT
    /// for an object up to the multipart threshold, else one ranged GET and one part PUT
    /// per part plus create and complete; server-side, one COPY or part copies).
    fn add(&mut self, job: &Job, dst: &Endpoint, opts: &TransferOptions, server_side: bool) {
        match job {
            Job::Delete { .. } => self.requests.dst_delete += 1,
            // It fails without a request.
            Job::Unlisted { error, .. } => tracing::warn!("{error}"),
            // A checksum comparison may yet skip it: planned as a copy, the upper bound.
            Job::Copy { src: meta, .. } | Job::CopyUnlessSame { src: meta, .. } => {
                self.objects += 1;
                self.bytes += meta.size;
                let (gets, puts) = requests_for(meta, dst, opts, server_side);
                if !self.src_local {
                    self.requests.src_get += gets;
                }
                if !self.dst_local {
                    self.requests.dst_put += puts;
                }
            }
        }
    }
}

/// (GETs at the source, PUT-class requests at the destination) for one object.
fn requests_for(
    meta: &ObjectMeta,
    dst: &Endpoint,
    opts: &TransferOptions,
    server_side: bool,
) -> (u64, u64) {
    const MIB: u64 = 1 << 20;
    let limits = dst.store.limits();
    let (single_max, preferred) = if server_side {
        (
            limits
                .max_single_put
                .min(opts.multipart_threshold.max(256 * MIB)),
            opts.part_size.max(64 * MIB),
        )
    } else {
        (
            opts.multipart_threshold.min(limits.max_single_put),
            opts.part_size,
        )
    };
    if meta.size <= single_max {
        return (u64::from(!server_side), 1);
    }
    let parts = part_size(meta.size, preferred, &limits).map_or(1, |p| meta.size.div_ceil(p));
    (if server_side { 0 } else { parts }, parts + 2)
}

fn money(v: Option<f64>, currency: &str) -> String {
    match v {
        Some(v) if v < 0.01 && v > 0.0 => format!("{v:.4} {currency}"),
        Some(v) => format!("{v:.2} {currency}"),
        None => "unknown".to_string(),
    }
}

fn duration(secs: f64) -> String {
    let s = secs.round() as u64;
    match s {
        0..60 => format!("{secs:.1} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

fn text(p: &Plan) -> String {
    let r = &p.requests;
    let mut t = format!(
        "plan: {} -> {}\n  objects:   {}{}\n  bytes:     {} ({} bytes)\n",
        p.source,
        p.destination,
        thousands(p.objects),
        if p.deletes > 0 {
            format!(" to copy, {} to delete", thousands(p.deletes))
        } else {
            String::new()
        },
        human_bytes(p.bytes),
        thousands(p.bytes),
    );
    if p.objects_resumed > 0 {
        t.push_str(&format!(
            "  resumed:   {} left out: an earlier run of this transfer copied them\n",
            thousands(p.objects_resumed)
        ));
    }
    t.push_str(&format!(
        "  requests:  source {} LIST, {} GET; destination {} {}, {} LIST, {} DELETE\n",
        thousands(r.src_list),
        thousands(r.src_get),
        thousands(r.dst_put),
        // Priced as PUTs, but a server-side copy sends COPY requests (and, for a large
        // object, part copies between a create and a complete).
        if p.server_side { "COPY" } else { "PUT" },
        thousands(r.dst_list),
        thousands(r.dst_delete)
    ));
    t.push_str(&format!(
        "  time:      about {} at {}/s{}\n",
        duration(p.estimated_seconds),
        human_bytes(p.throughput_bytes_per_second),
        if p.server_side {
            " (copied by the store itself)"
        } else {
            ""
        }
    ));
    t.push_str(&format!(
        "  source:    {} ({})\n  dest:      {} ({})\n",
        p.source_place.describe(),
        p.source_place.basis,
        p.destination_place.describe(),
        p.destination_place.basis
    ));
    let rate = p
        .egress
        .per_gib
        .map_or(String::new(), |r| format!(" at {r} {}/GiB", p.currency));
    t.push_str(&format!(
        "  egress:    {}{rate}: {}\n",
        money(p.egress.cost, &p.currency),
        p.egress.reason
    ));
    t.push_str(&format!(
        "  requests:  {} at the source, {} at the destination\n",
        money(p.source_requests_cost, &p.currency),
        money(p.destination_requests_cost, &p.currency)
    ));
    t.push_str(&format!(
        "  total:     {}  (list prices of {}, {}; override with --prices)\n",
        money(p.total_cost, &p.currency),
        p.prices_as_of,
        p.prices_source
    ));
    t
}
