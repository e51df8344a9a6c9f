//! The arithmetic of `skyhaul plan`: which egress rate applies between two places, what
//! the requests cost, and how long the transfer should take. No I/O, so every rule is
//! tested here with made-up prices.

use crate::place::Place;
use crate::prices::{Prices, ProviderPrices};
use serde::Serialize;

const GIB: f64 = (1u64 << 30) as f64;

/// Seconds one request takes to a nearby store, for the time estimate: a round trip plus
/// the server's work, as measured against S3 from the same region (20–30 ms).
pub const SECONDS_PER_REQUEST: f64 = 0.02;

/// Requests the transfer sends, as the engine sends them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Requests {
    /// At the source: LIST pages (1,000 keys each).
    pub src_list: u64,
    /// At the source: GETs and HEADs (a whole object, or one ranged GET per part).
    pub src_get: u64,
    /// At the destination: PUT, COPY and multipart create/part/complete requests.
    pub dst_put: u64,
    /// At the destination: LIST pages (sync's comparison, the verification pass).
    pub dst_list: u64,
    /// At the destination: DELETEs (free at every provider in the table).
    pub dst_delete: u64,
}

impl Requests {
    pub fn total(&self) -> u64 {
        self.src_list + self.src_get + self.dst_put + self.dst_list + self.dst_delete
    }
}

/// Which rate egress is charged at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EgressKind {
    SameRegion,
    SameContinent,
    OtherContinent,
    Internet,
    /// The source provider charges the same whatever the destination.
    Flat,
    /// Both sides are on this machine: nothing crosses a network.
    None,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Egress {
    pub kind: EgressKind,
    pub per_gib: Option<f64>,
    pub cost: Option<f64>,
    /// Why this rate, or why none: what to set to know it.
    pub reason: String,
}

fn unknown(reason: impl Into<String>) -> Egress {
    Egress {
        kind: EgressKind::Unknown,
        per_gib: None,
        cost: None,
        reason: reason.into(),
    }
}

/// The egress for `bytes` leaving `src` for `dst`.
pub fn egress(prices: &Prices, src: &Place, dst: &Place, bytes: u64) -> Egress {
    if src.local && dst.local {
        return Egress {
            kind: EgressKind::None,
            per_gib: Some(0.0),
            cost: Some(0.0),
            reason: "both sides are on this machine".into(),
        };
    }
    let Some(provider) = src.provider.as_deref() else {
        return unknown(if src.local {
            "the source is this machine: if it runs in a cloud, set --src-cloud and --src-region"
        } else {
            "the source's provider is unknown: set --src-cloud (aws, gcp, azure, cloudflare)"
        });
    };
    let Some(p) = prices.provider(provider) else {
        return unknown(format!(
            "no prices for provider '{provider}' in the price table"
        ));
    };
    let rates = [
        p.same_region_egress_per_gib,
        p.same_continent_egress_per_gib,
        p.other_continent_egress_per_gib,
        p.internet_egress_per_gib,
    ];
    let priced = |kind, per_gib: f64, reason: String| Egress {
        kind,
        per_gib: Some(per_gib),
        cost: Some(bytes as f64 / GIB * per_gib),
        reason,
    };
    if rates.iter().all(|r| *r == rates[0]) {
        return priced(
            EgressKind::Flat,
            rates[0],
            format!("{provider} charges the same for all egress"),
        );
    }
    let Some(dst_provider) = dst.provider.as_deref() else {
        return unknown(if dst.local {
            "the destination is this machine: set --dst-cloud and --dst-region (or, off any cloud, the internet rate applies: --dst-cloud other)"
        } else {
            "the destination's provider is unknown: set --dst-cloud"
        });
    };
    if dst_provider != provider {
        return priced(
            EgressKind::Internet,
            p.internet_egress_per_gib,
            format!("{provider} to another provider ({dst_provider}): internet egress"),
        );
    }
    same_provider(p, src, dst, provider)
        .map_or_else(unknown, |(kind, rate, why)| priced(kind, rate, why))
}

/// Within one provider: the same region is free-ish, other regions cost by continent.
fn same_provider(
    p: &ProviderPrices,
    src: &Place,
    dst: &Place,
    provider: &str,
) -> Result<(EgressKind, f64, String), String> {
    let inter = [
        p.same_continent_egress_per_gib,
        p.other_continent_egress_per_gib,
    ];
    let (Some(a), Some(b)) = (src.region.as_deref(), dst.region.as_deref()) else {
        return if p.same_region_egress_per_gib == inter[0] && inter[0] == inter[1] {
            Ok((EgressKind::Flat, inter[0], format!("within {provider}")))
        } else {
            Err("a region is unknown: set --src-region and --dst-region".into())
        };
    };
    if a.eq_ignore_ascii_case(b) {
        return Ok((
            EgressKind::SameRegion,
            p.same_region_egress_per_gib,
            format!("within {provider} {a}"),
        ));
    }
    match (p.continent(a), p.continent(b)) {
        (Some(x), Some(y)) if x == y => Ok((
            EgressKind::SameContinent,
            inter[0],
            format!("{provider} {a} to {b}, both in {x}"),
        )),
        (Some(x), Some(y)) => Ok((
            EgressKind::OtherContinent,
            inter[1],
            format!("{provider} {a} ({x}) to {b} ({y})"),
        )),
        _ if inter[0] == inter[1] => Ok((
            EgressKind::SameContinent,
            inter[0],
            format!("{provider} {a} to {b}: inter-region"),
        )),
        _ => Err(format!(
            "the continent of {provider} region {a} or {b} is not in the price table"
        )),
    }
}

/// What one side's requests cost: `Some(0)` for a local side (a file system bills no
/// requests, wherever the machine is), `None` when its provider is unknown or unpriced.
pub fn request_cost(prices: &Prices, place: &Place, list: u64, get: u64, put: u64) -> Option<f64> {
    if place.local {
        return Some(0.0);
    }
    let p = prices.provider(place.provider.as_deref()?)?;
    Some(
        (list as f64 * p.list_per_1000 + get as f64 * p.get_per_1000 + put as f64 * p.put_per_1000)
            / 1000.0,
    )
}

/// Seconds to move `bytes` at `throughput` bytes/s, plus the requests' round trips spread
/// over `connections`.
pub fn seconds(bytes: u64, requests: u64, throughput: u64, connections: u16) -> f64 {
    bytes as f64 / throughput.max(1) as f64
        + requests as f64 * SECONDS_PER_REQUEST / f64::from(connections.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(provider: Option<&str>, region: Option<&str>) -> Place {
        Place {
            provider: provider.map(str::to_string),
            region: region.map(str::to_string),
            local: false,
            basis: String::new(),
        }
    }

    fn prices() -> Prices {
        Prices::load(None).unwrap()
    }

    #[test]
    fn egress_kinds() {
        let p = prices();
        let aws = p.provider("aws").unwrap().clone();
        let gib = 1u64 << 30;
        let e = egress(
            &p,
            &place(Some("aws"), Some("us-east-1")),
            &place(Some("aws"), Some("us-east-1")),
            gib,
        );
        assert_eq!(e.kind, EgressKind::SameRegion);
        assert_eq!(e.cost, Some(aws.same_region_egress_per_gib));
        let e = egress(
            &p,
            &place(Some("aws"), Some("us-east-1")),
            &place(Some("aws"), Some("us-west-2")),
            10 * gib,
        );
        assert_eq!(e.kind, EgressKind::SameContinent);
        assert_eq!(e.cost, Some(10.0 * aws.same_continent_egress_per_gib));
        let e = egress(
            &p,
            &place(Some("gcp"), Some("us-central1")),
            &place(Some("gcp"), Some("europe-west4")),
            gib,
        );
        assert_eq!(e.kind, EgressKind::OtherContinent);
        let e = egress(
            &p,
            &place(Some("aws"), None),
            &place(Some("gcp"), None),
            gib,
        );
        assert_eq!(e.kind, EgressKind::Internet);
        assert_eq!(e.per_gib, Some(aws.internet_egress_per_gib));
        let e = egress(
            &p,
            &place(Some("cloudflare"), None),
            &place(None, None),
            gib,
        );
        assert_eq!(
            (e.kind, e.cost),
            (EgressKind::Flat, Some(0.0)),
            "R2 egress is free anywhere"
        );
    }

    #[test]
    fn unknown_when_it_cannot_be_known() {
        let p = prices();
        for (src, dst) in [
            (place(None, None), place(Some("aws"), None)),
            (place(Some("aws"), Some("us-east-1")), place(None, None)),
            (
                place(Some("aws"), None),
                place(Some("aws"), Some("us-east-1")),
            ),
            (place(Some("nebius"), None), place(Some("aws"), None)),
        ] {
            let e = egress(&p, &src, &dst, 1);
            assert_eq!(e.kind, EgressKind::Unknown, "{src:?} -> {dst:?}");
            assert_eq!(e.cost, None);
            assert!(!e.reason.is_empty());
        }
    }

    #[test]
    fn requests_and_time() {
        let p = prices();
        let aws = p.provider("aws").unwrap();
        let cost = request_cost(&p, &place(Some("aws"), None), 2000, 1000, 3000).unwrap();
        let want = 2.0 * aws.list_per_1000 + aws.get_per_1000 + 3.0 * aws.put_per_1000;
        assert!((cost - want).abs() < 1e-12);
        let local = Place {
            local: true,
            ..Default::default()
        };
        assert_eq!(request_cost(&p, &local, 5, 5, 5), Some(0.0));
        assert_eq!(request_cost(&p, &place(None, None), 5, 5, 5), None);
        assert_eq!(seconds(1000, 0, 100, 4), 10.0);
        assert_eq!(seconds(0, 400, 100, 4), 400.0 * SECONDS_PER_REQUEST / 4.0);
    }
}
