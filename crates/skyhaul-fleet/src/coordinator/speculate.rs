//! Speculative re-issue: when the queue is empty and a worker asks for work while others
//! still hold leases, the oldest of those leases is handed to it as well, and whichever
//! holder reports an item first does it. A slow worker (a throttled link, a busy host) then
//! no longer holds up the end of a transfer.
//!
//! Why doing the same work twice is harmless: a whole object is written by one PUT, so two
//! writes of the same source bytes leave the same object; a part's result is recorded only
//! from the first report (the later one is a `duplicate`), so the upload is completed with
//! one consistent set of part records, and a later upload of the same part number carries
//! the same bytes. The lease that lost is ended as `superseded`: its holder hears it at its
//! next heartbeat and drops the work.

use super::{Active, State};
use std::time::{Duration, Instant};

/// How many recent leases the usual pace is taken from.
const RATES_KEPT: usize = 64;

/// Notes how fast a lease was done (its bytes from grant to report).
pub(super) fn took(st: &mut State, bytes: u64, d: Duration) {
    if st.rates.len() == RATES_KEPT {
        st.rates.pop_front();
    }
    st.rates
        .push_back(bytes.max(1) as f64 / d.as_secs_f64().max(1e-3));
}

/// The lease to copy for `worker`, if any: the oldest one held by another worker, not a copy
/// itself and not copied yet, with items still to do, out for at least `after` and for twice
/// as long as a lease of its size usually takes (at the median pace of recent leases). Why:
/// at the end of a transfer whose workers are equally fast the last leases are on time and
/// nothing is doubled; only a lease that overstays its size's usual time is worth a second
/// worker.
pub(super) fn pick(st: &State, worker: &str, after: Duration, now: Instant) -> Option<u64> {
    let mut rates: Vec<f64> = st.rates.iter().copied().collect();
    rates.sort_unstable_by(f64::total_cmp);
    let pace = rates.get(rates.len() / 2).copied();
    let due = |l: &Active| match pace {
        Some(p) => after.max(Duration::from_secs_f64(2.0 * l.bytes as f64 / p)),
        None => after,
    };
    st.leases
        .iter()
        .filter(|(_, l)| {
            l.worker != worker
                && l.copy_of.is_none()
                && l.copy.is_none()
                && now.duration_since(l.granted) >= due(l)
        })
        .filter(|(id, l)| pending(st, **id, l).next().is_some())
        .min_by_key(|(id, l)| (l.granted, **id))
        .map(|(id, _)| *id)
}

/// The items of lease `id` that it still holds (not done through another lease yet).
pub(super) fn pending<'a>(
    st: &'a State,
    id: u64,
    lease: &'a Active,
) -> impl Iterator<Item = &'a String> + 'a {
    lease.items.iter().filter(move |name| {
        st.items
            .get(*name)
            .is_some_and(|p| p.lease == Some(id) || p.spare == Some(id))
    })
}

/// Lets lease `id` go of `names`: an item another lease also holds stays with that one,
/// any other goes back to the front of the queue. Returns how many went back.
pub(super) fn release(st: &mut State, id: u64, names: &[String]) -> usize {
    let mut back = 0;
    for name in names.iter().rev() {
        let Some(p) = st.items.get_mut(name) else {
            continue;
        };
        if p.spare == Some(id) {
            p.spare = None;
            continue;
        }
        if p.lease != Some(id) {
            continue;
        }
        p.lease = p.spare.take();
        if p.lease.is_none() {
            let bytes = p.item.bytes();
            st.queued_bytes += bytes;
            st.queue.push_front(name.clone());
            back += 1;
        }
    }
    // The pairing ends with the lease: the survivor may be copied again later.
    if let Some(l) = st.leases.get(&id) {
        let (copy, copy_of) = (l.copy, l.copy_of);
        for other in [copy, copy_of].into_iter().flatten() {
            if let Some(o) = st.leases.get_mut(&other) {
                o.copy = None;
                o.copy_of = None;
            }
        }
    }
    back
}

/// Of the leases named, those whose every item is now done through another lease: they are
/// taken off the books (and remembered, so their holders hear it and stop).
pub(super) fn superseded(st: &mut State, candidates: &[u64]) -> Vec<u64> {
    let mut ended = Vec::new();
    for &id in candidates {
        let Some(l) = st.leases.get(&id) else {
            continue;
        };
        if pending(st, id, l).next().is_some() {
            continue;
        }
        release(st, id, &[]);
        let l = st.leases.remove(&id).expect("present");
        tracing::info!(
            "lease {id} of worker {} superseded: its work is done",
            l.worker
        );
        st.superseded.insert(id);
        st.superseded_count += 1;
        ended.push(id);
    }
    ended
}
