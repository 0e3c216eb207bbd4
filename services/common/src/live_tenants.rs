//! The tenants file while the service runs: read at start, read again when it changes, and
//! applied only when it is valid.
//!
//! Onboarding a tenant must not mean restarting every stage. But stages reload one by one
//! (a Kubernetes ConfigMap reaches each pod's volume up to a minute or two apart, a
//! `SIGHUP` goes to one process at a time), so for a while the normaliser may accept a new
//! tenant that the deduper or a writer does not know yet. The rules that keep the stages
//! agreeing:
//!
//! - **Changes are found by content**: the file is read every `TENANTS_RELOAD_INTERVAL`
//!   and on `SIGHUP`, and compared with what was last read (a ConfigMap update swaps a
//!   symlink, so modification times are no guide).
//! - **A bad file changes nothing**: it is parsed and then checked by the stage's own
//!   `build` (a writer builds its clients and checks the tenants' field overrides against
//!   its contracts) before anything is swapped; a refused file keeps the running config,
//!   says why once (not at every check) and shows in `crm_sync.tenants.refused`.
//! - **Unknown is not final downstream**: a stage after the normaliser that meets a tenant
//!   it does not know reads the file at once and then waits for it to name the tenant, up
//!   to `TENANT_WAIT` ([`LiveTenants::wait_until`]); only then is the input dead-lettered
//!   TENANT_NOT_CONFIGURED. The normaliser, the gate, reads the file once more before it
//!   refuses a tenant, so one added a moment ago is not refused for the interval.
//! - **Removed is final**: a tenant this process knew and a reload removed is remembered
//!   with when ([`Loaded::removed`]), so its inputs are dead-lettered at once, without the
//!   wait, naming the removal; its DLQ entries and audit stay (they are only ever replayed
//!   or acknowledged by people). Adding it back forgets the removal.

use crate::tenants::Tenants;
use arc_swap::ArcSwap;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How a stage turns a parsed tenants file into what it works from (its clients, its
/// contracts with the tenants' overrides), given what it had; Err refuses the file.
pub type Build<T> = dyn Fn(&Tenants, Option<&Loaded<T>>) -> anyhow::Result<T> + Send + Sync;

/// One applied version of the tenants file.
pub struct Loaded<T> {
    pub tenants: Tenants,
    /// The stage's own part, built from `tenants`.
    pub stage: T,
    /// Counts applied versions from 1 (the file at start).
    pub generation: u64,
    /// Tenants an earlier version had and this one does not, with when (ms since the epoch)
    /// this process saw them go.
    pub removed: BTreeMap<String, i64>,
}

impl<T> Loaded<T> {
    /// Whether `id` is configured or was removed here: either way nothing is left to wait for.
    pub fn settled(&self, id: &str) -> bool {
        self.tenants.get(id).is_some() || self.removed.contains_key(id)
    }

    /// Why `id` has no configuration, for a dead letter's detail.
    pub fn why_unknown(&self, id: &str) -> String {
        match self.removed.get(id) {
            Some(at) => format!(
                "tenant {id:?} was removed from TENANTS_CONFIG at {}: its writes stop (replay once it is added back)",
                crate::clock::rfc3339_ms(*at)
            ),
            None => format!("tenant {id:?} is not in TENANTS_CONFIG"),
        }
    }
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// The file reads as it did.
    Unchanged,
    Applied {
        generation: u64,
        added: Vec<String>,
        removed: Vec<String>,
        changed: Vec<String>,
    },
    /// The file changed and was refused; the running config stays.
    Refused(String),
}

pub struct LiveTenants<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for LiveTenants<T> {
    fn clone(&self) -> Self {
        LiveTenants { inner: self.inner.clone() }
    }
}

struct Inner<T> {
    path: PathBuf,
    build: Box<Build<T>>,
    current: ArcSwap<Loaded<T>>,
    /// The text last read (applied or refused), and when: one reload at a time.
    last: Mutex<LastRead>,
    refused: std::sync::atomic::AtomicBool,
}

struct LastRead {
    text: String,
    at: Instant,
    /// Why the file was last refused (empty: it was not), so a refusal is said once.
    refusal: String,
}

/// On-demand reads ([`LiveTenants::recheck`]) are at most this often: a flood of inputs
/// from an unknown tenant must not turn into a flood of file reads.
const RECHECK_EVERY: Duration = Duration::from_millis(500);

impl<T: Send + Sync + 'static> LiveTenants<T> {
    /// Reads and builds the file at `path`; an error here stops the service (there is no
    /// running config to keep).
    pub fn load(path: &Path, build: Box<Build<T>>) -> anyhow::Result<LiveTenants<T>> {
        let text = read(path)?;
        let tenants = Tenants::parse(&text).map_err(|e| anyhow::anyhow!("TENANTS_CONFIG {}: {e}", path.display()))?;
        let stage = build(&tenants, None)?;
        let loaded = Loaded { tenants, stage, generation: 1, removed: BTreeMap::new() };
        crate::telemetry::tenants_metrics();
        Ok(LiveTenants {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                build,
                current: ArcSwap::from_pointee(loaded),
                last: Mutex::new(LastRead { text, at: Instant::now(), refusal: String::new() }),
                refused: false.into(),
            }),
        })
    }

    /// The config as it is now: take it once per batch and use it for the whole batch.
    pub fn current(&self) -> Arc<Loaded<T>> {
        self.inner.current.load_full()
    }

    /// Reads the file and applies it if it changed and is valid.
    pub fn reload(&self) -> Reload {
        let mut last = self.inner.last.lock().unwrap_or_else(|e| e.into_inner());
        last.at = Instant::now();
        let text = match read(&self.inner.path) {
            Ok(t) => t,
            // Unreadable (a ConfigMap mid-swap, a typo in a mount): keep what runs; say so
            // once per distinct failure, as for a refused file.
            Err(e) => return self.refuse(&mut last, format!("{e:#}"), String::new()),
        };
        if text == last.text {
            return Reload::Unchanged;
        }
        let parsed = Tenants::parse(&text).map_err(|e| anyhow::anyhow!("TENANTS_CONFIG {}: {e}", self.inner.path.display()));
        let old = self.current();
        let built = parsed.and_then(|tenants| (self.inner.build)(&tenants, Some(&old)).map(|stage| (tenants, stage)));
        let (tenants, stage) = match built {
            Ok(b) => b,
            Err(e) => return self.refuse(&mut last, format!("{e:#}"), text),
        };
        let now = crate::clock::now_ms();
        let mut removed = old.removed.clone();
        let (mut gone, mut added, mut changed) = (vec![], vec![], vec![]);
        for id in old.tenants.ids() {
            match tenants.get(&id) {
                None => {
                    removed.insert(id.clone(), now);
                    gone.push(id);
                }
                Some(t) if !t.same_as(old.tenants.get(&id).expect("listed")) => changed.push(id),
                Some(_) => {}
            }
        }
        for id in tenants.ids() {
            removed.remove(&id);
            if old.tenants.get(&id).is_none() {
                added.push(id);
            }
        }
        let generation = old.generation + 1;
        self.inner.current.store(Arc::new(Loaded { tenants, stage, generation, removed }));
        last.text = text;
        last.refusal.clear();
        self.inner.refused.store(false, std::sync::atomic::Ordering::Relaxed);
        crate::telemetry::tenants_reloaded("applied", false);
        tracing::info!(
            path = %self.inner.path.display(),
            generation,
            added = ?added,
            removed = ?gone,
            changed = ?changed,
            "TENANTS_CONFIG reloaded"
        );
        Reload::Applied { generation, added, removed: gone, changed }
    }

    fn refuse(&self, last: &mut LastRead, why: String, text: String) -> Reload {
        // The same refusal (a bad text, a file that stays unreadable) is not reported again
        // at every interval.
        if why != last.refusal {
            tracing::error!(path = %self.inner.path.display(), "TENANTS_CONFIG changed but is refused; the running config stays: {why}");
            crate::telemetry::tenants_reloaded("refused", true);
            last.refusal = why.clone();
        }
        if !text.is_empty() {
            last.text = text;
        }
        self.inner.refused.store(true, std::sync::atomic::Ordering::Relaxed);
        Reload::Refused(why)
    }

    /// Reads the file again unless it was read within [`RECHECK_EVERY`]: for a stage that
    /// meets a tenant it does not know.
    pub fn recheck(&self) -> Arc<Loaded<T>> {
        let recent = self.inner.last.lock().unwrap_or_else(|e| e.into_inner()).at.elapsed() < RECHECK_EVERY;
        if !recent {
            self.reload();
        }
        self.current()
    }

    /// The config once `ready` holds for it, reading the file again every so often, or as it
    /// is when `bound` has passed: what a stage downstream of the normaliser does before it
    /// dead-letters an input whose tenant it does not know (the normaliser accepted it, so
    /// the file this stage reads is about to name it).
    pub async fn wait_until(&self, bound: Duration, ready: impl Fn(&Loaded<T>) -> bool) -> Arc<Loaded<T>> {
        let started = Instant::now();
        let mut said = false;
        loop {
            let cur = self.recheck();
            if ready(&cur) || started.elapsed() >= bound {
                if said {
                    let outcome = if ready(&cur) { "found" } else { "timed_out" };
                    tracing::info!(waited = ?started.elapsed(), outcome, "waited for TENANTS_CONFIG to name a tenant");
                    crate::telemetry::tenants_waited(outcome);
                }
                return cur;
            }
            if !said {
                said = true;
                tracing::warn!(
                    bound = ?bound,
                    "an input names a tenant this stage's TENANTS_CONFIG does not (an earlier stage has reloaded, this one not yet?): waiting for it"
                );
            }
            let left = bound.saturating_sub(started.elapsed());
            tokio::time::sleep(left.min(RECHECK_EVERY)).await;
            crate::health::beat();
        }
    }

    /// Reloads every `every` and on SIGHUP until `stop`.
    pub fn watch(&self, every: Duration, stop: CancellationToken) {
        let live = self.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let mut hup = match signal(SignalKind::hangup()) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!("cannot listen for SIGHUP ({e}); TENANTS_CONFIG is still checked every {every:?}");
                    None
                }
            };
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                let hup_recv = async {
                    match hup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                    _ = hup_recv => tracing::info!("SIGHUP: reading TENANTS_CONFIG again"),
                }
                // Reading a small file: a blocking thread, so a slow volume never stalls
                // the runtime.
                let l = live.clone();
                let _ = tokio::task::spawn_blocking(move || l.reload()).await;
            }
        });
    }

    /// Whether the file on disk was last refused (the running config is older than it).
    pub fn refused(&self) -> bool {
        self.inner.refused.load(std::sync::atomic::Ordering::Relaxed)
    }
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read TENANTS_CONFIG {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "[tenants.a]\ndefault_region = \"US\"\n";
    const B: &str = "[tenants.b]\ndefault_region = \"GB\"\n";

    /// A file of its own, removed when the test ends.
    struct TempFile(PathBuf);

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn file(text: &str) -> (TempFile, PathBuf) {
        let p = std::env::temp_dir().join(format!("crm-sync-live-{}-{:x}.toml", std::process::id(), rand::random::<u64>()));
        std::fs::write(&p, text).unwrap();
        (TempFile(p.clone()), p)
    }

    fn counting() -> Box<Build<usize>> {
        Box::new(|t, _| Ok(t.len()))
    }

    #[test]
    fn a_changed_file_is_applied_and_an_unchanged_one_is_not() {
        let (_t, p) = file(A);
        let live = LiveTenants::load(&p, counting()).unwrap();
        assert_eq!(live.reload(), Reload::Unchanged);
        std::fs::write(&p, format!("{A}{B}")).unwrap();
        assert_eq!(live.reload(), Reload::Applied { generation: 2, added: vec!["b".into()], removed: vec![], changed: vec![] });
        let cur = live.current();
        assert_eq!((cur.stage, cur.generation), (2, 2));
        std::fs::write(&p, B).unwrap();
        assert_eq!(live.reload(), Reload::Applied { generation: 3, added: vec![], removed: vec!["a".into()], changed: vec![] });
        let cur = live.current();
        assert!(cur.settled("a") && cur.tenants.get("a").is_none());
        assert!(cur.why_unknown("a").contains("was removed"), "{}", cur.why_unknown("a"));
        assert!(!cur.settled("c"));
        assert!(cur.why_unknown("c").contains("is not in"));
        // Back again: no longer removed.
        std::fs::write(&p, format!("{A}{B}")).unwrap();
        assert!(matches!(live.reload(), Reload::Applied { .. }));
        assert!(!live.current().removed.contains_key("a"));
    }

    #[test]
    fn a_bad_file_keeps_the_running_config_and_says_why() {
        let (_t, p) = file(A);
        let live = LiveTenants::load(&p, counting()).unwrap();
        std::fs::write(&p, "[tenants.a]\ndefault_region = \"XX\"\n").unwrap();
        let Reload::Refused(why) = live.reload() else { panic!("a bad region is refused") };
        assert!(why.contains("tenant 'a'"), "{why}");
        assert!(live.refused());
        assert_eq!(live.current().generation, 1);
        assert!(live.current().tenants.get("a").is_some());
        // The stage's own check refuses too.
        let strict: Box<Build<usize>> = Box::new(|t, _| {
            anyhow::ensure!(t.get("b").is_none(), "b is not allowed here");
            Ok(t.len())
        });
        let (_t2, p2) = file(A);
        let live = LiveTenants::load(&p2, strict).unwrap();
        std::fs::write(&p2, format!("{A}{B}")).unwrap();
        assert!(matches!(live.reload(), Reload::Refused(w) if w.contains("not allowed")));
        assert_eq!(live.current().stage, 1);
        // Fixed: applied, and no longer refused.
        std::fs::write(&p2, A.replace("US", "DE")).unwrap();
        assert!(matches!(live.reload(), Reload::Applied { ref changed, .. } if changed == &["a".to_string()]));
        assert!(!live.refused());
        // A file gone keeps the config too.
        std::fs::remove_file(&p2).unwrap();
        assert!(matches!(live.reload(), Reload::Refused(w) if w.contains("cannot read")));
        assert!(live.current().tenants.get("a").is_some());
    }

    #[tokio::test]
    async fn waiting_for_a_tenant_ends_when_the_file_names_it_or_at_the_bound() {
        let (_t, p) = file(A);
        let live = LiveTenants::load(&p, counting()).unwrap();
        let started = Instant::now();
        let cur = live.wait_until(Duration::from_millis(300), |l| l.settled("b")).await;
        assert!(!cur.settled("b"));
        assert!(started.elapsed() >= Duration::from_millis(300));
        let writer = {
            let p = p.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(700)).await;
                std::fs::write(&p, format!("{A}{B}")).unwrap();
            })
        };
        let cur = live.wait_until(Duration::from_secs(20), |l| l.settled("b")).await;
        assert!(cur.tenants.get("b").is_some());
        writer.await.unwrap();
    }
}
