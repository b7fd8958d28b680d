//! What open pages are told as it changes. One gatherer for all of them: the VM table is read
//! once a second (only while a page listens) and pushed when it differs from the last one; new
//! audit entries are read from where the last read ended. However many tabs are open, the VMs
//! and the command line see one reader.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use feather_core::{StateRoot, VmName};
use feather_shuttle::board::Board;
use feather_shuttle::Audit;
use feather_svc::manager::client_protocol::Ask;
use feather_svc::manager::protocol::Response;
use feather_vm::services::ServicesError;
use tokio::sync::{broadcast, watch};

/// How often the VM table is read while someone watches. Reading it costs about 0.1 ms per
/// VM (its config, state, lock and cgroup files): every 2 s, 100 VMs cost the server about 0.5%
/// of a core (issue 18: under 1% with 5 tabs open), and a change shows within 2 s.
const TABLE_EVERY: Duration = Duration::from_secs(2);
/// How often an open VM page's services are read.
const SERVICES_EVERY: Duration = Duration::from_secs(2);
/// How often the audit log is looked at for new lines.
const AUDIT_EVERY: Duration = Duration::from_millis(300);

/// The VM table as pages show it: `ls --json`'s rows, or why they could not be read.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub json: String,
}

pub struct Live {
    root: StateRoot,
    table: watch::Sender<Arc<Table>>,
    audit: broadcast::Sender<Arc<String>>,
    /// The questions of `ask` rules waiting on the board, as JSON.
    asks: watch::Sender<Arc<String>>,
    /// Per VM whose page is open: its services, read by one gatherer for all its viewers.
    services: Mutex<HashMap<VmName, watch::Sender<Arc<String>>>>,
}

impl Live {
    pub fn start(root: StateRoot) -> Live {
        let (table, _) = watch::channel(Arc::new(Table {
            json: "null".into(),
        }));
        let (audit, _) = broadcast::channel(256);
        tokio::spawn(gather_table(root.clone(), table.clone()));
        tokio::spawn(follow_audit(root.clone(), audit.clone()));
        let (asks, _) = watch::channel(Arc::new("[]".to_owned()));
        tokio::spawn(follow_board(root.clone(), asks.clone()));
        Live {
            root,
            table,
            audit,
            asks,
            services: Mutex::new(HashMap::new()),
        }
    }

    /// VM `name`'s services as `service ls --json` gives them, pushed as they change. The
    /// first viewer starts its gatherer; it ends when the last one goes.
    pub fn services(&self, name: &VmName) -> watch::Receiver<Arc<String>> {
        let mut gatherers = self.services.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = gatherers.get(name).filter(|s| !s.is_closed()) {
            return sender.subscribe();
        }
        let (sender, receiver) = watch::channel(Arc::new(String::new()));
        tokio::spawn(gather_services(
            self.root.clone(),
            name.clone(),
            sender.clone(),
        ));
        gatherers.insert(name.clone(), sender);
        receiver
    }

    pub fn table(&self) -> watch::Receiver<Arc<Table>> {
        self.table.subscribe()
    }

    pub fn audit(&self) -> broadcast::Receiver<Arc<String>> {
        self.audit.subscribe()
    }

    pub fn asks(&self) -> watch::Receiver<Arc<String>> {
        self.asks.subscribe()
    }
}

/// The VM table, as `feather ls --json` gives it.
pub fn read_table(root: &StateRoot) -> String {
    match feather_vm::inspect::summaries(root) {
        Ok(rows) => serde_json::to_string(&serde_json::json!({ "vms": rows })),
        Err(e) => {
            serde_json::to_string(&serde_json::json!({ "error": feather_core::error::causes(&e) }))
        }
    }
    .unwrap_or_else(|_| "null".into())
}

async fn gather_table(root: StateRoot, table: watch::Sender<Arc<Table>>) {
    let mut every = tokio::time::interval(TABLE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if table.receiver_count() == 0 {
            continue;
        }
        let root = root.clone();
        let Ok(json) = tokio::task::spawn_blocking(move || read_table(&root)).await else {
            continue;
        };
        table.send_if_modified(|current| {
            let changed = current.json != json;
            if changed {
                *current = Arc::new(Table { json });
            }
            changed
        });
    }
}

/// VM `name`'s services: `{"services": […]}`, or `{"error": …}` (not running, none).
pub fn read_services(root: &StateRoot, name: &VmName) -> String {
    let answer = feather_vm::services::call(root, name, &Ask::List);
    let json = match answer {
        Ok(Response::List { units }) => serde_json::json!({ "services": units }),
        Ok(_) => serde_json::json!({ "error": "the service manager answered something else" }),
        Err(ServicesError::NoServices { .. }) => serde_json::json!({ "services": [] }),
        Err(e) => serde_json::json!({ "error": feather_core::error::causes(&e) }),
    };
    json.to_string()
}

async fn gather_services(root: StateRoot, name: VmName, services: watch::Sender<Arc<String>>) {
    let mut every = tokio::time::interval(SERVICES_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Ends once nobody watches (the first tick runs at once, for the first viewer).
    while services.receiver_count() > 0 {
        every.tick().await;
        let (root, name) = (root.clone(), name.clone());
        let Ok(json) = tokio::task::spawn_blocking(move || read_services(&root, &name)).await
        else {
            continue;
        };
        services.send_if_modified(|current| {
            let changed = **current != json;
            if changed {
                *current = Arc::new(json);
            }
            changed
        });
    }
}

/// How often the board of `ask` questions is looked at (a question waits 60 s at most).
const BOARD_EVERY: Duration = Duration::from_millis(300);

async fn follow_board(root: StateRoot, asks: watch::Sender<Arc<String>>) {
    let board = Board::of(root.dir());
    let mut every = tokio::time::interval(BOARD_EVERY);
    loop {
        every.tick().await;
        let json = serde_json::to_string(&board.pending()).unwrap_or_else(|_| "[]".into());
        asks.send_if_modified(|current| {
            let changed = **current != json;
            if changed {
                *current = Arc::new(json);
            }
            changed
        });
    }
}

async fn follow_audit(root: StateRoot, audit: broadcast::Sender<Arc<String>>) {
    let log = Audit::new(root.dir());
    // Pages fetch what was there before they opened; only what comes after is pushed.
    let mut offset = std::fs::metadata(log.path()).map(|m| m.len()).unwrap_or(0);
    let mut every = tokio::time::interval(AUDIT_EVERY);
    loop {
        every.tick().await;
        let Ok((entries, next)) = log.entries_from(offset) else {
            continue;
        };
        offset = next;
        for entry in entries {
            if let Ok(json) = serde_json::to_string(&entry) {
                // Nobody listening is not an error.
                let _ = audit.send(Arc::new(json));
            }
        }
    }
}
