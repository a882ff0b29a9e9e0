//! An in-memory backend, for tests and ephemeral devices.

use std::{collections::BTreeMap, sync::Mutex};

use super::{Backend, Rewrite, Row, Scrub, StoreError, Table, Write};

type Rows = BTreeMap<(Table, Vec<u8>), Vec<u8>>;

/// Rows in memory. Batches apply atomically under one lock, preconditions
/// included: share it between handles as an `Arc<MemoryBackend>`.
///
/// It has no files, so [`Backend::scrub`] does nothing
/// ([`Scrub::Unsupported`]). Superseded values are dropped from the map;
/// their heap memory is freed, not wiped (they are sealed, like every row).
#[derive(Debug, Default)]
pub struct MemoryBackend {
    rows: Mutex<Rows>,
}

impl MemoryBackend {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn rows(&self) -> std::sync::MutexGuard<'_, Rows> {
        // Nothing in a batch can panic midway (inserts and removes on a map), so
        // a poisoned lock cannot hide a half-applied batch and is safe to reuse.
        self.rows.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every row, for tests that compare a whole store before and after.
    pub fn snapshot(&self) -> BTreeMap<(Table, Vec<u8>), Vec<u8>> {
        self.rows().clone()
    }
}

impl Backend for MemoryBackend {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.rows().get(&(table, key.to_vec())).cloned())
    }

    fn scan(&self, table: Table) -> Result<Vec<Row>, StoreError> {
        Ok(self.rows().iter().filter(|((t, _), _)| *t == table).map(|((_, k), v)| (k.clone(), v.clone())).collect())
    }

    fn scan_after(&self, table: Table, after: Option<&[u8]>, limit: usize) -> Result<Vec<Row>, StoreError> {
        use std::ops::Bound;
        let start = match after {
            Some(after) => Bound::Excluded((table, after.to_vec())),
            None => Bound::Included((table, Vec::new())),
        };
        Ok(self
            .rows()
            .range((start, Bound::Unbounded))
            .take_while(|((t, _), _)| *t == table)
            .take(limit)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }

    fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
        let mut rows = self.rows();
        // Every precondition is checked before anything is written, under the
        // one lock that every handle on this backend shares.
        if let Some(failed) =
            writes.iter().find(|w| !w.expected.holds(rows.get(&(w.table, w.key.clone())).map(Vec::as_slice)))
        {
            return Err(StoreError::Conflict { table: failed.table });
        }
        for write in writes {
            match &write.value {
                Some(value) => rows.insert((write.table, write.key.clone()), value.clone()),
                None => rows.remove(&(write.table, write.key.clone())),
            };
        }
        Ok(())
    }

    /// Every row rewritten under the one lock every handle shares: no other
    /// handle's batch falls between the read and the write (the trait's
    /// default would let a row inserted meanwhile escape the rewrite).
    fn rewrite_all(&self, rewrite: &mut Rewrite<'_>) -> Result<Scrub, StoreError> {
        let mut rows = self.rows();
        let mut rewritten = Vec::with_capacity(rows.len());
        for ((table, key), value) in rows.iter() {
            rewritten.push(((*table, key.clone()), rewrite(*table, key, value)?));
        }
        rows.extend(rewritten);
        Ok(Scrub::Unsupported)
    }

    /// Does nothing: the rows are in memory, there are no files to scrub.
    fn scrub(&self) -> Result<Scrub, StoreError> {
        Ok(Scrub::Unsupported)
    }
}
