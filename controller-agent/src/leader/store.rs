//! The leader's store under `<data_dir>/store/`, outside the slots so it
//! survives upgrades: the configuration (SE groups, virtual services), the
//! upgrade journal and the history of operations. Each is one JSON file,
//! replaced atomically (temp, fsync, rename, fsync dir) on every change; the
//! data is a few kilobytes, so a whole-file rewrite is cheap and a reader
//! (or an operator with `cat`) never sees half a write.

use std::path::{Path, PathBuf};

use common::fsutil;
pub use coordinator::config::{Config, ConfigError, HaMode, SeGroup, VirtualService};
use serde::{Serialize, de::DeserializeOwned};

/// The store's files.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens (creates) `<data_dir>/store`.
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        let dir = data_dir.join("store");
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    /// Reads `name.json`; `None` if it does not exist.
    pub fn load<T: DeserializeOwned>(&self, name: &str) -> std::io::Result<Option<T>> {
        let p = self.dir.join(format!("{name}.json"));
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| std::io::Error::other(format!("{} is corrupt: {e}", p.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Renames `name.json` to `to.json`.
    pub fn rename(&self, name: &str, to: &str) -> std::io::Result<()> {
        std::fs::rename(self.dir.join(format!("{name}.json")), self.dir.join(format!("{to}.json")))
    }

    /// Replaces `name.json` atomically.
    pub fn save<T: Serialize>(&self, name: &str, v: &T) -> std::io::Result<()> {
        let p = self.dir.join(format!("{name}.json"));
        fsutil::atomic_write(&p, &serde_json::to_vec_pretty(v).expect("serializes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_round_trips_and_survives_reopen() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        assert_eq!(s.load::<Config>("config").unwrap(), None);
        let mut c = Config::default();
        c.put_group(
            SeGroup { name: "g1".into(), ha_mode: HaMode::ActiveActive, max_parallel_ses: None, health_gates: vec![] },
            false,
        )
        .unwrap();
        s.save("config", &c).unwrap();
        assert_eq!(Store::open(d.path()).unwrap().load::<Config>("config").unwrap(), Some(c));
    }
}
