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
        .filter(|(id, l)| pending_for(st, **id, l, worker).next().is_some())
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

/// Of [`pending`], the items `worker` may be handed: not one it was denied, which waits for
/// another worker's try.
pub(super) fn pending_for<'a>(
    st: &'a State,
    id: u64,
    lease: &'a Active,
    worker: &'a str,
) -> impl Iterator<Item = &'a String> + 'a {
    pending(st, id, lease).filter(move |name| {
        st.items[*name]
            .denied
            .as_ref()
            .is_none_or(|(denier, _)| denier != worker)
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
            st.queued_cost += super::cost(&p.item);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator::Pending;
    use crate::protocol::WorkItem;
    use skyhaul_store::ObjectMeta;

    const MIB: u64 = 1 << 20;

    /// A state with lease 1 (worker "slow", items a and b, granted `age` ago).
    fn state(age: Duration) -> State {
        let mut st = State::default();
        let granted = Instant::now() - age;
        for name in ["a", "b"] {
            let item = WorkItem::Object {
                src: ObjectMeta::new(name, MIB),
                dst_key: name.into(),
                unless_same: None,
            };
            let pending = Pending {
                item,
                lease: Some(1),
                spare: None,
                restored: false,
                denied: None,
            };
            st.items.insert(pending.item.name(), pending);
        }
        st.leases.insert(
            1,
            Active {
                worker: "slow".into(),
                items: vec!["object a".into(), "object b".into()],
                deadline: granted + Duration::from_secs(60),
                granted,
                bytes: 2 * MIB,
                copy: None,
                copy_of: None,
            },
        );
        st
    }

    /// Makes lease 2 (worker "fast") a copy of lease 1, as the lease handler does.
    fn copy(st: &mut State) {
        let l = Active {
            worker: "fast".into(),
            items: st.leases[&1].items.clone(),
            deadline: Instant::now() + Duration::from_secs(60),
            granted: Instant::now(),
            bytes: 2 * MIB,
            copy: None,
            copy_of: Some(1),
        };
        st.leases.insert(2, l);
        st.leases.get_mut(&1).unwrap().copy = Some(2);
        for p in st.items.values_mut() {
            p.spare = Some(2);
        }
    }

    #[test]
    fn picks_an_overdue_lease_of_another_worker_once() {
        let after = Duration::from_secs(2);
        let now = Instant::now();
        // Too young, or the asker's own: nothing.
        assert_eq!(
            pick(&state(Duration::from_secs(1)), "fast", after, now),
            None
        );
        assert_eq!(
            pick(&state(Duration::from_secs(5)), "slow", after, now),
            None
        );
        let mut st = state(Duration::from_secs(5));
        assert_eq!(pick(&st, "fast", after, now), Some(1));
        // At the usual pace (1 MiB/s), 2 MiB are due after 4 s: 5 s is overdue, 3 s not.
        took(&mut st, MIB, Duration::from_secs(1));
        assert_eq!(pick(&st, "fast", after, now), Some(1));
        let mut young = state(Duration::from_secs(3));
        took(&mut young, MIB, Duration::from_secs(1));
        assert_eq!(pick(&young, "fast", after, now), None);
        // Copied once: neither it nor its copy is copied again.
        copy(&mut st);
        assert_eq!(pick(&st, "third", after, now), None);
    }

    #[test]
    fn the_first_report_supersedes_the_other_lease() {
        let mut st = state(Duration::from_secs(5));
        copy(&mut st);
        // The copy (lease 2) reports both items first: the original is superseded.
        st.items.clear();
        release(&mut st, 2, &["object a".into(), "object b".into()]);
        st.leases.remove(&2);
        assert_eq!(superseded(&mut st, &[1]), vec![1]);
        assert!(st.leases.is_empty());
        assert!(st.superseded.contains(&1));
    }

    #[test]
    fn an_expired_holder_leaves_the_item_to_the_other() {
        let mut st = state(Duration::from_secs(5));
        copy(&mut st);
        // The original expires: its items stay with the copy, nothing is queued.
        let items = st.leases[&1].items.clone();
        assert_eq!(release(&mut st, 1, &items), 0);
        assert!(st.queue.is_empty());
        assert!(st
            .items
            .values()
            .all(|p| p.lease == Some(2) && p.spare.is_none()));
        assert_eq!(
            st.leases[&2].copy_of, None,
            "the copy may be copied in turn"
        );
        // Then the copy expires too: now they go back to the queue.
        st.leases.remove(&1);
        assert_eq!(release(&mut st, 2, &items), 2);
        assert_eq!(st.queued_cost, 2 * MIB);
    }
}
