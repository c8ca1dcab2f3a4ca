//! An in-memory [`Cluster`] for the engine's unit tests: objects in a map, every request
//! recorded in order, and failures injected per object and request kind.
//!
//! It is not an API server: an apply stores the applied body (no field merge; the applier is
//! added to `managedFields`), and only
//! what the safety rules depend on is modelled (dry-run stores nothing, namespaced objects
//! need their Namespace, a delete checks its uid precondition, CRD kinds are served once the
//! CRD is Established). Watches see every change made through it (or [`Memory::put`]).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use futures::StreamExt as _;
use kube::core::{ApiResource, GroupVersionKind, Status};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::cluster::{ApplyMode, Cluster, Page, Selector, WatchEvent, WatchStream};
use crate::discovery::{Kinds, Resolved};
use crate::error::Result;

/// One recorded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Discover,
    Get(String),
    /// A LIST of a kind (its plural), with the label selector it asked for.
    List(String, Option<String>),
    Apply {
        name: String,
        dry_run: bool,
        force: bool,
    },
    Delete {
        name: String,
        uid: Option<String>,
    },
    /// A create (hooks): the name, or the generateName prefix followed by `*`.
    Create {
        name: String,
        dry_run: bool,
    },
    AwaitCrd(String),
    /// A watch of a kind (its plural) with a selector.
    Watch(String, Selector),
}

/// Which request of an object fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum On {
    DryRun,
    Write,
    Delete,
}

#[derive(Default)]
struct State {
    kinds: Kinds,
    /// (plural, namespace, name) -> object.
    objects: BTreeMap<(String, Option<String>, String), Value>,
    log: Vec<Request>,
    failures: BTreeMap<(String, On), (u16, String, String)>,
    next_uid: u64,
    /// Hook objects (by name or generateName prefix) whose run fails; every other created Job
    /// completes and every other created Pod succeeds at once, as if their controller and
    /// kubelet were instantaneous.
    failing_hooks: Vec<String>,
    /// Hook objects that run until read this many more times, then complete.
    slow_hooks: BTreeMap<String, usize>,
    /// Applies (dry-run or not) take a few turns of the executor: requests overlap as they do
    /// against a real API server, and [`Memory::peak_applies`] tells how many did at once.
    slow_applies: bool,
    /// Applies under way, and the most at once.
    applies_running: usize,
    applies_peak: usize,
}

/// One change, as watches see it: (plural, namespace, event).
type Change = (String, Option<String>, WatchEvent);

/// The in-memory cluster.
pub struct Memory {
    state: Mutex<State>,
    changes: broadcast::Sender<Change>,
}

impl Default for Memory {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            changes: broadcast::channel(1024).0,
        }
    }
}

/// Whether `obj` matches `selector` (equality-based labels, `metadata.name` fields).
fn selects(selector: &Selector, obj: &Value) -> bool {
    let labels = selector.labels.iter().flat_map(|l| l.split(','));
    let fields = selector.fields.iter().flat_map(|f| f.split(','));
    labels
        .map(|term| (term, &obj["metadata"]["labels"]))
        .chain(fields.map(|term| (term, &Value::Null)))
        .all(|(term, labels)| {
            let (key, value) = term.split_once('=').unwrap_or((term, ""));
            match key {
                "metadata.name" => obj["metadata"]["name"].as_str() == Some(value),
                _ => labels[key].as_str() == Some(value),
            }
        })
}

/// A served kind.
pub fn kind(group: &str, version: &str, kind: &str, plural: &str, namespaced: bool) -> Resolved {
    Resolved {
        resource: ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(group, version, kind),
            plural,
        ),
        namespaced,
        served: true,
    }
}

fn api_error(code: u16, reason: &str, message: &str) -> kube::Error {
    kube::Error::Api(Status::failure(message, reason).with_code(code).boxed())
}

impl Memory {
    /// A cluster serving Namespaces, ConfigMaps, Deployments, Jobs, Pods and CRDs.
    pub fn new() -> Self {
        let memory = Memory::default();
        {
            let mut st = memory.lock();
            for r in [
                kind("", "v1", "Namespace", "namespaces", false),
                kind("", "v1", "ConfigMap", "configmaps", true),
                kind("apps", "v1", "Deployment", "deployments", true),
                kind("batch", "v1", "Job", "jobs", true),
                kind("", "v1", "Pod", "pods", true),
                kind(
                    "apiextensions.k8s.io",
                    "v1",
                    "CustomResourceDefinition",
                    "customresourcedefinitions",
                    false,
                ),
            ] {
                st.kinds.insert(r.resource, r.namespaced);
            }
        }
        memory
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("memory cluster lock")
    }

    /// Makes every apply take a few turns of the executor (see [`Memory::peak_applies`]).
    pub fn slow_applies(&self) {
        self.lock().slow_applies = true;
    }

    /// The most applies that were under way at once (with [`Memory::slow_applies`]), and
    /// starts counting afresh.
    pub fn peak_applies(&self) -> usize {
        std::mem::take(&mut self.lock().applies_peak)
    }

    /// Stores `object` as if someone had created it; returns it with its uid.
    pub fn put(&self, plural: &str, mut object: Value) -> Value {
        let mut st = self.lock();
        st.next_uid += 1;
        object["metadata"]["uid"] = json!(format!("uid-{}", st.next_uid));
        object["metadata"]["resourceVersion"] = json!(st.next_uid.to_string());
        let key = (
            plural.to_owned(),
            object["metadata"]["namespace"].as_str().map(str::to_owned),
            object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
        let _ = self.changes.send((
            key.0.clone(),
            key.1.clone(),
            WatchEvent::Present(object.clone()),
        ));
        st.objects.insert(key, object.clone());
        object
    }

    /// The stored object, if any.
    pub fn object(&self, plural: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let key = (
            plural.to_owned(),
            namespace.map(str::to_owned),
            name.to_owned(),
        );
        self.lock().objects.get(&key).cloned()
    }

    /// Makes request `on` of the object `name` fail with `code`, `reason`, `message`.
    pub fn fail(&self, name: &str, on: On, code: u16, reason: &str, message: &str) {
        self.lock().failures.insert(
            (name.to_owned(), on),
            (code, reason.to_owned(), message.to_owned()),
        );
    }

    /// Makes the created Job or Pod `name` (or generateName prefix) fail.
    pub fn fail_hook(&self, name: &str) {
        self.lock().failing_hooks.push(name.to_owned());
    }

    /// Makes the created Job `name` run until it was read `reads` times, then complete.
    pub fn slow_hook(&self, name: &str, reads: usize) {
        self.lock().slow_hooks.insert(name.to_owned(), reads);
    }

    /// Every request so far, in order.
    pub fn log(&self) -> Vec<Request> {
        self.lock().log.clone()
    }

    fn injected(st: &State, name: &str, on: On) -> Option<kube::Error> {
        st.failures
            .get(&(name.to_owned(), on))
            .map(|(code, reason, message)| api_error(*code, reason, message))
    }

    fn key(
        kind: &Resolved,
        namespace: Option<&str>,
        name: &str,
    ) -> (String, Option<String>, String) {
        (
            kind.resource.plural.clone(),
            namespace.filter(|_| kind.namespaced).map(str::to_owned),
            name.to_owned(),
        )
    }
}

impl Cluster for Memory {
    async fn discover(&self) -> Result<Kinds> {
        let mut st = self.lock();
        st.log.push(Request::Discover);
        Ok(st.kinds.clone())
    }

    async fn get(
        &self,
        kind: &Resolved,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<Value>, kube::Error> {
        let mut st = self.lock();
        st.log.push(Request::Get(name.to_owned()));
        let key = Self::key(kind, namespace, name);
        if let Some(left) = st.slow_hooks.get_mut(name) {
            *left = left.saturating_sub(1);
            if *left == 0
                && let Some(obj) = st.objects.get_mut(&key)
            {
                obj["status"] = json!({"conditions": [{"type": "Complete", "status": "True"}]});
            }
        }
        Ok(st.objects.get(&key).cloned())
    }

    async fn list(
        &self,
        kind: &Resolved,
        namespace: Option<&str>,
        labels: Option<&str>,
        limit: u32,
        continue_token: Option<&str>,
    ) -> Result<Page, kube::Error> {
        let mut st = self.lock();
        st.log.push(Request::List(
            kind.resource.plural.clone(),
            labels.map(str::to_owned),
        ));
        let skip: usize = continue_token.map_or(0, |t| t.parse().unwrap_or(0));
        // `key=value,key=value`: every pair must match.
        let matches = |obj: &Value| {
            labels.is_none_or(|selector| {
                selector.split(',').all(|pair| {
                    pair.split_once('=')
                        .is_some_and(|(k, v)| obj["metadata"]["labels"][k].as_str() == Some(v))
                })
            })
        };
        let all: Vec<Value> = st
            .objects
            .iter()
            .filter(|((plural, ns, _), obj)| {
                *plural == kind.resource.plural
                    && (namespace.is_none() || ns.as_deref() == namespace)
                    && matches(obj)
            })
            .map(|(_, v)| v.clone())
            .collect();
        let end = (skip + limit as usize).min(all.len());
        Ok(Page {
            items: all[skip..end].to_vec(),
            continue_token: (end < all.len()).then(|| end.to_string()),
        })
    }

    async fn apply(
        &self,
        kind: &Resolved,
        namespace: Option<&str>,
        name: &str,
        body: &Value,
        mode: ApplyMode,
    ) -> Result<Value, kube::Error> {
        let slow = {
            let mut st = self.lock();
            st.applies_running += 1;
            st.applies_peak = st.applies_peak.max(st.applies_running);
            st.slow_applies
        };
        if slow {
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
        }
        let result = self.apply_now(kind, namespace, name, body, mode);
        self.lock().applies_running -= 1;
        result
    }

    async fn create(
        &self,
        kind: &Resolved,
        namespace: Option<&str>,
        body: &Value,
        dry_run: bool,
    ) -> Result<Value, kube::Error> {
        let mut st = self.lock();
        let given = body["metadata"]["name"].as_str().unwrap_or_default();
        let prefix = body["metadata"]["generateName"]
            .as_str()
            .unwrap_or_default();
        let label = if given.is_empty() {
            format!("{prefix}*")
        } else {
            given.to_owned()
        };
        st.log.push(Request::Create {
            name: label,
            dry_run,
        });
        let on = if dry_run { On::DryRun } else { On::Write };
        let id = if given.is_empty() { prefix } else { given };
        if let Some(e) = Self::injected(&st, id, on) {
            return Err(e);
        }
        if let Some(ns) = namespace.filter(|_| kind.namespaced)
            && !st
                .objects
                .contains_key(&("namespaces".to_owned(), None, ns.to_owned()))
        {
            return Err(api_error(
                404,
                "NotFound",
                &format!("namespaces \"{ns}\" not found"),
            ));
        }
        st.next_uid += 1;
        let name = if given.is_empty() {
            format!("{prefix}{}", st.next_uid)
        } else {
            given.to_owned()
        };
        let key = Self::key(kind, namespace, &name);
        if st.objects.contains_key(&key) {
            return Err(api_error(
                409,
                "AlreadyExists",
                &format!("{} \"{name}\" already exists", kind.resource.plural),
            ));
        }
        let mut stored = body.clone();
        stored["metadata"]["name"] = json!(name);
        stored["metadata"]["uid"] = json!(format!("uid-{}", st.next_uid));
        stored["metadata"]["resourceVersion"] = json!(st.next_uid.to_string());
        let fails = st.failing_hooks.iter().any(|f| f == id);
        let slow = st.slow_hooks.contains_key(id);
        match (kind.resource.kind.as_str(), fails) {
            _ if slow => {}
            ("Job", false) => {
                stored["status"] = json!({"conditions": [{"type": "Complete", "status": "True"}]});
            }
            ("Job", true) => {
                stored["status"] = json!({"conditions": [{"type": "Failed", "status": "True",
                    "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]});
            }
            ("Pod", false) => stored["status"] = json!({"phase": "Succeeded"}),
            ("Pod", true) => stored["status"] = json!({"phase": "Failed", "reason": "Error"}),
            _ => {}
        }
        if !dry_run {
            st.objects.insert(key, stored.clone());
        }
        Ok(stored)
    }

    async fn delete(
        &self,
        kind: &Resolved,
        namespace: Option<&str>,
        name: &str,
        uid: Option<&str>,
    ) -> Result<(), kube::Error> {
        let mut st = self.lock();
        st.log.push(Request::Delete {
            name: name.to_owned(),
            uid: uid.map(str::to_owned),
        });
        if let Some(e) = Self::injected(&st, name, On::Delete) {
            return Err(e);
        }
        let key = Self::key(kind, namespace, name);
        let Some(live) = st.objects.get(&key) else {
            return Err(api_error(404, "NotFound", "not found"));
        };
        if uid.is_some_and(|u| live["metadata"]["uid"].as_str() != Some(u)) {
            return Err(api_error(
                409,
                "Conflict",
                "Precondition failed: UID in precondition does not match",
            ));
        }
        if let Some(gone) = st.objects.remove(&key) {
            let _ = self.changes.send((key.0, key.1, WatchEvent::Deleted(gone)));
        }
        Ok(())
    }

    async fn await_crd_established(&self, name: &str, _timeout: Duration) -> Result<()> {
        let mut st = self.lock();
        st.log.push(Request::AwaitCrd(name.to_owned()));
        // Established at once: its kinds are served from now on.
        let key = (
            "customresourcedefinitions".to_owned(),
            None,
            name.to_owned(),
        );
        let Some(crd) = st.objects.get(&key).cloned() else {
            return Ok(());
        };
        let spec = &crd["spec"];
        let group = spec["group"].as_str().unwrap_or_default();
        let kind_name = spec["names"]["kind"].as_str().unwrap_or_default();
        let plural = spec["names"]["plural"].as_str().unwrap_or_default();
        let namespaced = spec["scope"].as_str() != Some("Cluster");
        for v in spec["versions"].as_array().into_iter().flatten() {
            let r = kind(
                group,
                v["name"].as_str().unwrap_or_default(),
                kind_name,
                plural,
                namespaced,
            );
            st.kinds.insert(r.resource, r.namespaced);
        }
        Ok(())
    }

    fn watch(&self, kind: &Resolved, namespace: Option<&str>, selector: &Selector) -> WatchStream {
        let mut st = self.lock();
        st.log.push(Request::Watch(
            kind.resource.plural.clone(),
            selector.clone(),
        ));
        let plural = kind.resource.plural.clone();
        let namespace = namespace.filter(|_| kind.namespaced).map(str::to_owned);
        let selector = selector.clone();
        let wanted = move |p: &str, ns: &Option<String>, obj: &Value| {
            p == plural && (namespace.is_none() || *ns == namespace) && selects(&selector, obj)
        };
        // Subscribed under the lock that guards the listing: no change falls in between.
        let changes = self.changes.subscribe();
        let mut initial = vec![Ok(WatchEvent::Listing)];
        initial.extend(
            st.objects
                .iter()
                .filter(|((p, ns, _), obj)| wanted(p, ns, obj))
                .map(|(_, obj)| Ok(WatchEvent::Present(obj.clone()))),
        );
        initial.push(Ok(WatchEvent::Listed));
        let later = futures::stream::unfold(changes, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(change) => return Some((change, rx)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .filter_map(move |(p, ns, event)| {
            let keep = match &event {
                WatchEvent::Present(obj) | WatchEvent::Deleted(obj) => wanted(&p, &ns, obj),
                _ => false,
            };
            futures::future::ready(keep.then_some(Ok(event)))
        });
        futures::stream::iter(initial).chain(later).boxed()
    }
}

impl Memory {
    /// An apply, at once.
    fn apply_now(
        &self,
        kind: &Resolved,
        namespace: Option<&str>,
        name: &str,
        body: &Value,
        mode: ApplyMode,
    ) -> Result<Value, kube::Error> {
        let mut st = self.lock();
        st.log.push(Request::Apply {
            name: name.to_owned(),
            dry_run: mode.dry_run,
            force: mode.force,
        });
        let on = if mode.dry_run { On::DryRun } else { On::Write };
        // A forced apply takes fields over: an injected conflict does not stop it.
        match Self::injected(&st, name, on) {
            Some(kube::Error::Api(s)) if s.code == 409 && mode.force => {}
            Some(e) => return Err(e),
            None => {}
        }
        if let Some(ns) = namespace.filter(|_| kind.namespaced)
            && !st
                .objects
                .contains_key(&("namespaces".to_owned(), None, ns.to_owned()))
        {
            return Err(api_error(
                404,
                "NotFound",
                &format!("namespaces \"{ns}\" not found"),
            ));
        }
        let key = Self::key(kind, namespace, name);
        let mut stored = body.clone();
        // The applier becomes a manager of the object (once).
        let mut managers: Vec<Value> = st
            .objects
            .get(&key)
            .and_then(|l| l["metadata"]["managedFields"].as_array().cloned())
            .unwrap_or_default();
        let entry = json!({"manager": crate::FIELD_MANAGER, "operation": "Apply"});
        if !managers.contains(&entry) {
            managers.push(entry);
        }
        stored["metadata"]["managedFields"] = Value::Array(managers);
        match st.objects.get(&key) {
            Some(live) => {
                stored["metadata"]["uid"] = live["metadata"]["uid"].clone();
                stored["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"].clone();
            }
            None => {
                stored["metadata"]["uid"] = json!(format!("uid-{}", st.next_uid + 1));
                stored["metadata"]["resourceVersion"] = json!("0");
            }
        }
        if !mode.dry_run {
            st.next_uid += 1;
            if st.objects.get(&key) != Some(&stored) {
                stored["metadata"]["resourceVersion"] = json!(st.next_uid.to_string());
                let _ = self.changes.send((
                    key.0.clone(),
                    key.1.clone(),
                    WatchEvent::Present(stored.clone()),
                ));
            }
            st.objects.insert(key, stored.clone());
        }
        Ok(stored)
    }
}
