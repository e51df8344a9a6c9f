//! A fleet coordinator's records: which worker held which work, and what became of it.
//!
//! The queue itself needs no table: a restarted coordinator plans again from the listing, and
//! the objects done, the open uploads and their finished parts (the rest of the journal) tell
//! it what is left. What only these records hold is the leases: those still out when the
//! coordinator stopped are handed back to their workers' results instead of being sent again,
//! and an expired lease's work can be shown to have been redone exactly once.

use crate::writer::Write;
use crate::{now_ms, to_sql_i64, Journal, Result, TransferId};
use rusqlite::{params, Transaction};
use std::collections::BTreeMap;

/// What became of a lease.
pub const LEASE_GRANTED: &str = "granted";
pub const LEASE_COMPLETED: &str = "completed";
pub const LEASE_EXPIRED: &str = "expired";
/// Ended because another lease (a speculative copy, or the lease it copied) did its work.
pub const LEASE_SUPERSEDED: &str = "superseded";
/// Given back by a worker that left the fleet (it could not copy anything).
pub const LEASE_RETURNED: &str = "returned";

/// One lease as the journal holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetLease {
    pub lease_id: u64,
    pub worker: String,
    pub bytes: u64,
    /// The work items as the coordinator handed them out (its own serialisation).
    pub payload: String,
    /// [`LEASE_GRANTED`], [`LEASE_COMPLETED`], [`LEASE_EXPIRED`], [`LEASE_SUPERSEDED`] or
    /// [`LEASE_RETURNED`].
    pub state: String,
    /// Each item's name and outcome (`None` while the lease is out): `done`, `duplicate` (it
    /// was already done through another lease), `failed`, `denied` (handed to another
    /// worker for a second try), `expired`, `superseded`, `returned`.
    pub items: BTreeMap<String, Option<String>>,
}

/// Queued writes of fleet records (applied by the writer thread).
pub(crate) enum FleetWrite {
    Granted {
        transfer: u64,
        lease_id: u64,
        worker: String,
        bytes: u64,
        payload: String,
        items: Vec<String>,
        at_ms: i64,
    },
    Ended {
        transfer: u64,
        lease_id: u64,
        state: &'static str,
        at_ms: i64,
    },
    Outcome {
        transfer: u64,
        lease_id: u64,
        item: String,
        outcome: &'static str,
    },
}

impl Journal {
    /// Records a lease handed to `worker`. Queued: returns at once.
    pub fn lease_granted(
        &self,
        id: TransferId,
        lease_id: u64,
        worker: &str,
        bytes: u64,
        payload: &str,
        items: Vec<String>,
    ) -> Result<()> {
        self.queue(Write::Fleet(FleetWrite::Granted {
            transfer: id.as_u64(),
            lease_id,
            worker: worker.to_string(),
            bytes,
            payload: payload.to_string(),
            items,
            at_ms: now_ms(),
        }))
    }

    /// Records a lease's end: [`LEASE_COMPLETED`], [`LEASE_EXPIRED`], [`LEASE_SUPERSEDED`] or
    /// [`LEASE_RETURNED`] (for the last three, its items without an outcome take that
    /// state). Queued.
    pub fn lease_ended(&self, id: TransferId, lease_id: u64, state: &'static str) -> Result<()> {
        self.queue(Write::Fleet(FleetWrite::Ended {
            transfer: id.as_u64(),
            lease_id,
            state,
            at_ms: now_ms(),
        }))
    }

    /// Records what became of one item of a lease. Queued.
    pub fn lease_item(
        &self,
        id: TransferId,
        lease_id: u64,
        item: &str,
        outcome: &'static str,
    ) -> Result<()> {
        self.queue(Write::Fleet(FleetWrite::Outcome {
            transfer: id.as_u64(),
            lease_id,
            item: item.to_string(),
            outcome,
        }))
    }

    /// Every lease of the transfer, in the order they were granted.
    pub fn fleet_leases(&self, id: TransferId) -> Result<Vec<FleetLease>> {
        self.sync_reads()?;
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT lease_id, worker, bytes, payload, state FROM fleet_leases
                 WHERE transfer = ?1 ORDER BY lease_id",
            )?;
            let mut leases: Vec<FleetLease> = stmt
                .query_map([id.as_u64() as i64], |r| {
                    Ok(FleetLease {
                        lease_id: r.get::<_, i64>(0)? as u64,
                        worker: r.get(1)?,
                        bytes: r.get::<_, i64>(2)? as u64,
                        payload: r.get(3)?,
                        state: r.get(4)?,
                        items: BTreeMap::new(),
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            let mut stmt = c.prepare_cached(
                "SELECT lease_id, item, outcome FROM fleet_items WHERE transfer = ?1",
            )?;
            let rows = stmt.query_map([id.as_u64() as i64], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?))
            })?;
            let index: std::collections::HashMap<u64, usize> = leases
                .iter()
                .enumerate()
                .map(|(i, l)| (l.lease_id, i))
                .collect();
            for row in rows {
                let (lease, item, outcome): (u64, String, Option<String>) = row?;
                if let Some(&i) = index.get(&lease) {
                    leases[i].items.insert(item, outcome);
                }
            }
            Ok(leases)
        })
    }
}

/// Applies one queued fleet write inside the writer's transaction.
pub(crate) fn apply(tx: &Transaction<'_>, w: &FleetWrite) -> Result<()> {
    match w {
        FleetWrite::Granted {
            transfer,
            lease_id,
            worker,
            bytes,
            payload,
            items,
            at_ms,
        } => {
            let (t, l) = (*transfer as i64, to_sql_i64(*lease_id));
            tx.prepare_cached(
                "INSERT OR REPLACE INTO fleet_leases
                     (transfer, lease_id, worker, bytes, payload, granted_ms, state)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'granted')",
            )?
            .execute(params![t, l, worker, to_sql_i64(*bytes), payload, at_ms])?;
            let mut stmt = tx.prepare_cached(
                "INSERT OR REPLACE INTO fleet_items (transfer, lease_id, item) VALUES (?1, ?2, ?3)",
            )?;
            for item in items {
                stmt.execute(params![t, l, item])?;
            }
        }
        FleetWrite::Ended {
            transfer,
            lease_id,
            state,
            at_ms,
        } => {
            let (t, l) = (*transfer as i64, to_sql_i64(*lease_id));
            tx.prepare_cached(
                "UPDATE fleet_leases SET state = ?3, ended_ms = ?4
                 WHERE transfer = ?1 AND lease_id = ?2",
            )?
            .execute(params![t, l, state, at_ms])?;
            if [LEASE_EXPIRED, LEASE_SUPERSEDED, LEASE_RETURNED].contains(state) {
                tx.prepare_cached(
                    "UPDATE fleet_items SET outcome = ?3
                     WHERE transfer = ?1 AND lease_id = ?2 AND outcome IS NULL",
                )?
                .execute(params![t, l, state])?;
            }
        }
        FleetWrite::Outcome {
            transfer,
            lease_id,
            item,
            outcome,
        } => {
            // A lease reported twice (its report committed, the answer lost to a coordinator
            // killed just then, and the worker's retry reaching the next one) was done once:
            // the retry's `duplicate` does not overwrite the `done`.
            tx.prepare_cached(
                "UPDATE fleet_items SET outcome = ?4
                 WHERE transfer = ?1 AND lease_id = ?2 AND item = ?3 AND outcome IS NOT 'done'",
            )?
            .execute(params![
                *transfer as i64,
                to_sql_i64(*lease_id),
                item,
                outcome
            ])?;
        }
    }
    Ok(())
}
