//! Reading the live state of many objects cheaply: one LIST per kind and namespace where
//! many objects share them, single GETs otherwise.

use std::collections::BTreeMap;

use futures::{StreamExt, TryStreamExt, stream};
use plumb_core::{ObjectKey, SyncId};
use serde_json::Value;

use super::Engine;
use super::prepare::summary;
use crate::cluster::Cluster;
use crate::discovery::Resolved;
use crate::error::{Error, Result};

/// From this many objects of one kind in one namespace on, a LIST is cheaper.
const LIST_FROM: usize = 5;
/// Objects per LIST page: a page is held whole (and briefly twice, typed then as JSON) while
/// it is reduced to summaries, so it bounds the snapshot's peak; 100 objects of a kind still
/// take one LIST in a Sync of a few hundred objects.
const PAGE: u32 = 100;

impl<C: Cluster> Engine<C> {
    /// Reads the live copy of `wanted` (a large sync costs a handful of requests, not one per
    /// object): the [`summary`] of each (as compact JSON), and the whole object as compact JSON of those
    /// `keep_full` names. Each page is reduced as it arrives: no tree of every live object
    /// is held at once.
    ///
    /// Where a LIST pays, it first lists only what carries `owner`'s ownership labels: a Sync
    /// that shares its namespace with others (or with anything else) reads its own objects,
    /// not the whole namespace. What that does not find (new objects, objects to adopt or owned
    /// by another Sync, objects whose labels were edited away) is read after it: by GETs when
    /// few, else by a LIST of the whole namespace as before.
    pub(super) async fn snapshot(
        &self,
        wanted: Vec<(ObjectKey, Resolved)>,
        owner: &SyncId,
        concurrency: usize,
        keep_full: impl Fn(&ObjectKey) -> bool + Sync,
    ) -> Result<(BTreeMap<ObjectKey, String>, BTreeMap<ObjectKey, String>)> {
        let mut full = BTreeMap::new();
        let mut keep = |key: &ObjectKey, obj: Value| {
            if keep_full(key) {
                full.insert(key.clone(), obj.to_string());
            }
            summary(obj).to_string()
        };
        type Group = (String, String, String, Option<String>);
        let mut groups: BTreeMap<Group, Vec<(ObjectKey, Resolved)>> = BTreeMap::new();
        for (key, r) in wanted {
            let ns = if r.namespaced {
                key.namespace.clone()
            } else {
                None
            };
            let g = (
                r.resource.group.clone(),
                r.resource.version.clone(),
                r.resource.plural.clone(),
                ns,
            );
            groups.entry(g).or_default().push((key, r));
        }
        let mut singles = Vec::new();
        let mut live: BTreeMap<ObjectKey, String> = BTreeMap::new();
        let selector = owner.label_selector();
        let mut whole = Vec::new();
        for (_, members) in groups {
            if members.len() < LIST_FROM {
                singles.extend(members);
                continue;
            }
            // A selector the server refuses (a Sync name too long for a label value) leaves
            // everything to the reads below.
            let _ = self
                .list_members(&members, Some(&selector), &mut live, &mut keep)
                .await;
            let missing: Vec<_> = members
                .into_iter()
                .filter(|(key, _)| !live.contains_key(key))
                .collect();
            if missing.len() >= LIST_FROM {
                whole.push(missing);
            } else {
                singles.extend(missing);
            }
        }
        for members in whole {
            self.list_members(&members, None, &mut live, &mut keep)
                .await?;
        }
        let got: Vec<(ObjectKey, Value)> = stream::iter(singles)
            .map(|(key, r)| async move {
                let obj = self
                    .cluster
                    .get(&r, key.namespace.as_deref(), &key.name)
                    .await
                    .map_err(|source| Error::Api {
                        context: format!("reading {key}"),
                        source,
                    })?;
                Ok::<_, Error>(obj.map(|o| (key, o)))
            })
            .buffer_unordered(concurrency.max(1) * 2)
            .try_filter_map(|x| async move { Ok(x) })
            .try_collect()
            .await?;
        for (key, obj) in got {
            let summary = keep(&key, obj);
            live.insert(key, summary);
        }
        Ok((live, full))
    }

    /// Lists the kind and namespace of `members` (all of one group), only what matches the
    /// label selector `labels` when given, and adds those of `members` it finds to `live`
    /// (reduced by `keep`).
    async fn list_members(
        &self,
        members: &[(ObjectKey, Resolved)],
        labels: Option<&str>,
        live: &mut BTreeMap<ObjectKey, String>,
        keep: &mut impl FnMut(&ObjectKey, Value) -> String,
    ) -> Result<()> {
        let (first_key, r) = &members[0];
        let namespace = first_key.namespace.as_deref().filter(|_| r.namespaced);
        let by_name: BTreeMap<&str, &ObjectKey> =
            members.iter().map(|(k, _)| (k.name.as_str(), k)).collect();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .cluster
                .list(r, namespace, labels, PAGE, token.as_deref())
                .await
                .map_err(|source| Error::Api {
                    context: format!("listing {} in {:?}", r.resource.plural, namespace),
                    source,
                })?;
            for obj in page.items {
                if let Some(key) = obj["metadata"]["name"]
                    .as_str()
                    .and_then(|n| by_name.get(n))
                {
                    let summary = keep(key, obj);
                    live.insert((*key).clone(), summary);
                }
            }
            match page.continue_token {
                Some(t) => token = Some(t),
                None => return Ok(()),
            }
        }
    }
}
