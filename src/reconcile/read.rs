//! Reading what a destination holds: one task per resource type follows the search's `next` links (the
//! cursor a server hands out cannot be split, so a type's pages come one after another), with at most the
//! destination's `concurrency` requests in flight across the types (its `in_flight` permits, as delivery
//! takes them), each task fetching its next page while the one before is hashed, looked up and compared. On
//! its task each page becomes [`Observed`] resources: the content hash of what is there and what the ledger
//! says of it, so that the comparison with the expected set needs neither the resource nor the ledger entry
//! any more (a `--fix` run keeps both, for the repairs).

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::compare::{Known, Observed};
use super::page::Node;
use crate::deliver::Destination;
use crate::deliver::paging::{MAX_PAGES, Pages};
use crate::deliver::transport::Found;
use crate::store::{LedgerEntry, ResourceKey, Store};

/// Pages read ahead of the comparison, all types together (each task may hold one more while it waits).
const PAGES_AHEAD: usize = 2;

/// One resource as read, judged against the ledger.
pub(super) struct Read {
    pub observed: Observed,
    /// With `--fix`: the resource and its ledger entry, for the repairs.
    pub full: Option<Box<Full>>,
}

/// What a repair needs of a resource read.
pub(super) struct Full {
    pub found: Found,
    pub hash: String,
    pub ledger: Option<LedgerEntry>,
}

/// One page of one resource type.
pub(super) struct ReadPage {
    pub resource_type: String,
    pub resources: Vec<Read>,
    /// Whether that was the type's last page.
    pub last: bool,
}

/// What every reading task of one destination shares.
struct Shared {
    dest: Arc<Destination>,
    store: Store,
    /// `system|code` of the partner tag searched for (`system|` for any partner).
    tag: String,
    page_size: usize,
    keep_full: bool,
}

/// The reading tasks of one destination, and the pages they have read. Dropping it stops them.
pub(super) struct Readers {
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
    tx: Option<mpsc::Sender<anyhow::Result<ReadPage>>>,
    rx: mpsc::Receiver<anyhow::Result<ReadPage>>,
}

impl Readers {
    pub fn new(dest: Arc<Destination>, store: Store, tag: String, page_size: usize, keep_full: bool) -> Self {
        let (tx, rx) = mpsc::channel(PAGES_AHEAD);
        let shared = Arc::new(Shared { dest, store, tag, page_size, keep_full });
        Self { shared, tasks: JoinSet::new(), tx: Some(tx), rx }
    }

    /// Starts reading every resource of ours of `resource_type`.
    pub fn start(&mut self, resource_type: &str) {
        let Some(tx) = self.tx.clone() else { return };
        let shared = self.shared.clone();
        let resource_type = resource_type.to_string();
        self.tasks.spawn(async move {
            if let Err(e) = read_type(&shared, &resource_type, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
    }

    /// No more types will be started: [`Readers::next`] ends once the started ones are read.
    pub fn close(&mut self) {
        self.tx = None;
    }

    /// The next page read, in the order they arrive; `None` once closed and every type is read.
    pub async fn next(&mut self) -> Option<anyhow::Result<ReadPage>> {
        self.rx.recv().await
    }
}

/// Reads one type's pages, handing each over as it is read; ends when the comparison stops taking them. The
/// next page is fetched while the one before is hashed and looked up in the ledger (the server and the state
/// store work side by side; at most two pages of a type are held).
async fn read_type(
    shared: &Shared,
    resource_type: &str,
    tx: &mpsc::Sender<anyhow::Result<ReadPage>>,
) -> anyhow::Result<()> {
    let dest = &shared.dest;
    let what = || format!("reading {resource_type} from {}", dest.name);
    let first =
        format!("{resource_type}?_tag={}&_count={}", crate::deliver::fhir::url_encode(&shared.tag), shared.page_size);
    let mut pages = Pages::new(&dest.name, &first, MAX_PAGES);
    let mut body = fetch(shared, &first).await.with_context(what)?;
    loop {
        // serde_json's message gives a line and column, never the text around it.
        let page = Node::parse(&body).map_err(|e| anyhow::anyhow!("the page is not JSON: {e}")).with_context(what)?;
        let next = pages.follow(next_link(&page)).with_context(what)?;
        let fetch_next = async {
            match &next {
                Some(path) => Some(fetch(shared, path).await),
                None => None,
            }
        };
        let (resources, fetched) = tokio::join!(observe(shared, resource_type, page), fetch_next);
        let read = ReadPage { resource_type: resource_type.to_string(), resources: resources?, last: next.is_none() };
        if tx.send(Ok(read)).await.is_err() {
            break; // the comparison has ended (stopped, or failed elsewhere)
        }
        match fetched {
            Some(fetched) => body = fetched.with_context(what)?,
            None => break,
        }
    }
    Ok(())
}

/// One page's bytes, within the destination's permits.
async fn fetch(shared: &Shared, path: &str) -> anyhow::Result<Vec<u8>> {
    let dest = &shared.dest;
    let _permit = dest.in_flight.acquire().await.context("the destination's permits are closed")?;
    Ok(dest.transport.page_bytes(path).await?)
}

/// The page's `next` link.
fn next_link<'p>(page: &'p Node<'_>) -> Option<&'p str> {
    match page.get("link")? {
        Node::Array(links) => {
            links.iter().find(|l| l.get("relation").and_then(Node::as_str) == Some("next"))?.get("url")?.as_str()
        }
        _ => None,
    }
}

/// The partner in a resource's source-partner tag.
fn partner_of(resource: &Node<'_>) -> Option<String> {
    let Node::Array(tags) = resource.get("meta")?.get("tag")? else { return None };
    let tag = tags.iter().find(|c| c.get("system").and_then(Node::as_str) == Some(super::TAG_SYSTEM))?;
    tag.get("code")?.as_str().map(str::to_string)
}

/// The match entries of `page` of `resource_type`, hashed and looked up in the ledger and the open conflicts.
async fn observe(shared: &Shared, resource_type: &str, mut page: Node<'_>) -> anyhow::Result<Vec<Read>> {
    let entries = match page.take("entry") {
        Some(Node::Array(entries)) => entries,
        _ => Vec::new(),
    };
    let resources: Vec<(String, Node<'_>)> = entries
        .into_iter()
        .filter(|e| e.get("search").and_then(|s| s.get("mode")).and_then(Node::as_str).is_none_or(|m| m == "match"))
        .filter_map(|mut e| e.take("resource"))
        .filter(|r| r.get("resourceType").and_then(Node::as_str) == Some(resource_type))
        .filter_map(|r| Some((r.get("id")?.as_str()?.to_string(), r)))
        .collect();
    let keys: Vec<ResourceKey> = resources.iter().map(|(id, _)| ResourceKey::new(resource_type, id)).collect();
    let dest = &shared.dest;
    let mut ledger: HashMap<String, LedgerEntry> =
        shared.store.ledger_get_many(&dest.name, &keys).await?.into_iter().map(|e| (e.key.id.clone(), e)).collect();
    let conflicts = shared.store.conflicts_open_among(&dest.name, &keys).await?;
    let mut out = Vec::with_capacity(resources.len());
    for ((id, resource), key) in resources.into_iter().zip(keys) {
        let hash = resource.content_hash();
        let led = ledger.remove(&id);
        let observed = Observed {
            tag: partner_of(&resource),
            known: led.as_ref().map(|l| Known::of(l, &hash, || resource.to_value(), &dest.salt)),
            conflict: conflicts.contains(&key),
            id: id.clone(),
        };
        let full = shared.keep_full.then(|| {
            let version_id = resource.get("meta").and_then(|m| m.get("versionId")).and_then(Node::as_str);
            let version_id = version_id.map(str::to_string);
            Box::new(Full { found: Found { id, version_id, resource: resource.to_value() }, hash, ledger: led })
        });
        out.push(Read { observed, full });
    }
    Ok(out)
}
