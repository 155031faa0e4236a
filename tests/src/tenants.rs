//! Two tenants on one Furnace stack, for the facilities suites: the stack,
//! a tenant network, the keys and three real `furnace backend`s
//! ([`crate::tenant`] has the parts), and the runners that start the probe
//! app with a backend under `io.furnace.v1`.

use crate::running::RunningApp;
use crate::stack::{strs, FurnaceStack};
use crate::tenant::{
    keygen, public_key, remove_at_exit, remove_storage_at_exit, TenantNet, TestBackend,
};
use furnace_config::ProviderConfig;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Taken over when poisoned: one failed test must not fail the others.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How long a test waits for any one thing.
pub const WAIT: Duration = Duration::from_secs(60);

/// Two tenants on one Furnace stack: tenant one's backend `be` allows apps
/// `alpha` and `beta`, tenant two's `be2` allows `gamma`; `delta` is
/// allowed by no one. Both backends listen in one tenant network, on ports
/// 7000 and 7001. A third backend, `outage` on port 7002 (key `be`, allowing
/// `alpha`), is for the one test that stops and restarts its backend, so the
/// tests that run beside it keep theirs.
pub struct Tenants {
    pub stack: FurnaceStack,
    pub net: TenantNet,
    pub keys: tempfile::TempDir,
    pub one: Mutex<TestBackend>,
    pub two: Mutex<TestBackend>,
    pub outage: Mutex<TestBackend>,
}

impl Tenants {
    /// Boots the stack (guest, sidecar, containerd), the network, the keys
    /// and both backends; `label` names them.
    pub fn start(label: &str) -> Tenants {
        let stack = FurnaceStack::start(label).expect("the Furnace stack starts");
        let net = TenantNet::create(label).expect("the tenant network is set up");
        // Under the provider's default key_root, where the shim takes app
        // keys from.
        let key_root = ProviderConfig::default().facilities.key_root;
        std::fs::create_dir_all(&key_root).unwrap();
        let keys = tempfile::Builder::new()
            .prefix(&format!("test-{label}-"))
            .tempdir_in(&key_root)
            .unwrap();
        // Kept in a static, the TempDir is never dropped; registered before
        // the backends, it is removed after they are killed.
        remove_at_exit(keys.path().to_path_buf());
        keygen(
            keys.path(),
            &["be", "alpha", "beta", "delta", "gamma", "be2"],
        )
        .unwrap();
        let one = TestBackend::start(&net, 7000, keys.path(), "be", &["alpha", "beta"]).unwrap();
        let two = TestBackend::start(&net, 7001, keys.path(), "be2", &["gamma"]).unwrap();
        let outage = TestBackend::start(&net, 7002, keys.path(), "be", &["alpha"]).unwrap();
        Tenants {
            stack,
            net,
            keys,
            one: Mutex::new(one),
            two: Mutex::new(two),
            outage: Mutex::new(outage),
        }
    }

    /// Runs the probe as `id` with `flags`: create must fail with every one
    /// of `words` in its error, and leave no relay set up.
    pub fn refused_at_create(&self, id: &str, flags: &[String], words: &[&str]) {
        let out = self
            .stack
            .run(id, &strs(flags), &["/furnace-probe", "fac", "keys"]);
        assert!(!out.status.success(), "{id} ran");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(words.iter().all(|w| err.contains(w)), "{id}: {err}");
        assert!(
            !crate::relays::relay_dir(id).exists(),
            "{id}: nothing is left set up"
        );
        self.stack.remove(id);
    }

    pub fn key(&self, name: &str) -> PathBuf {
        self.keys.path().join(name)
    }

    /// The ctr flags for app `app` of the backend at `address` pinning `pin`.
    pub fn flags(&self, app: &str, address: &str, pin: &str, limits: Option<&str>) -> Vec<String> {
        let mut f = vec![
            "--annotation".to_string(),
            format!("furnace.dev/backend={address}"),
            "--annotation".into(),
            format!(
                "furnace.dev/backend-key={}",
                public_key(self.keys.path(), pin)
            ),
            "--annotation".into(),
            format!("furnace.dev/app-key={}.key", self.key(app).display()),
        ];
        if let Some(l) = limits {
            f.extend(["--annotation".into(), format!("furnace.dev/limits={l}")]);
        }
        f
    }

    pub fn address(&self, port: u16) -> String {
        format!("{}:{port}", self.net.tenant_ip)
    }

    /// Runs the probe's facilities steps as app `app` of tenant one, to the end.
    pub fn run(&self, id: &str, app: &str, steps: &[&str]) -> Vec<Value> {
        self.run_with(id, self.flags(app, &self.address(7000), "be", None), steps)
    }

    pub fn run_with(&self, id: &str, flags: Vec<String>, steps: &[&str]) -> Vec<Value> {
        remove_storage_at_exit(id);
        let mut args = vec!["/furnace-probe", "fac"];
        args.extend_from_slice(steps);
        let out = self.stack.run(id, &strs(&flags), &args);
        assert!(
            out.status.success(),
            "ctr run {id}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        lines(&String::from_utf8_lossy(&out.stdout))
    }

    pub fn spawn(&self, id: &str, flags: Vec<String>, steps: &[&str]) -> RunningApp {
        remove_storage_at_exit(id);
        let mut args = vec!["/furnace-probe", "fac"];
        args.extend_from_slice(steps);
        self.stack
            .spawn_app(&self.stack.image, id, &strs(&flags), &args)
            .expect("ctr run starts")
    }
}

/// The JSON lines of `text`.
pub fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A predicate for the backend's line of `app`'s `kind` message `data`.
pub fn from(app: &str, kind: &str, data: &str) -> impl Fn(&Value) -> bool {
    let (app, kind, data) = (app.to_string(), kind.to_string(), data.to_string());
    move |v| v["app"] == app && v["type"] == kind && v["data"] == data
}
