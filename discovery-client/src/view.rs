//! [`ServiceView`]: the live instances of one type, kept up to date in the background from
//! a [`Watch`], for programs that only want the current list.
//!
//! A background task applies the watch's events to a map of instances and publishes the
//! result through a `tokio::sync::watch` channel: reading the list is a lock-free clone of
//! an `Arc`, and every handle can wait for the next change. A burst of events is applied
//! before publishing once. While no server is reachable, the view goes on serving the last
//! list it had and its [`status`](ServiceView::status) says it is not current; when the
//! watch resumes or is reset, it is current again.
//!
//! The task ends when the last handle is dropped, which drops the watch and unsubscribes.

use std::collections::BTreeMap;
use std::sync::Arc;

use discovery_proto::{Instance, Revision};
use futures_util::FutureExt;
use tokio::sync::watch;
use uuid::Uuid;

use crate::error::Error;
use crate::event::WatchEvent;
use crate::watch::Watch;

/// How current a [`ServiceView`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ViewStatus {
    /// Connected and following every change.
    Current,
    /// The connection broke; the list is the last one known, and the watch is reconnecting.
    Disconnected,
    /// The view fell behind the changes (its task could not keep up); the list is the last
    /// one known until the reset snapshot that is on its way.
    Lagging,
    /// The watch ended (the client stopped, or a server refused to open it again); the list
    /// will not change any more.
    Ended,
}

/// What the background task publishes.
#[derive(Debug)]
struct ViewState {
    instances: Arc<[Instance]>,
    revision: Revision,
    status: ViewStatus,
}

/// The live instances of one service type, followed in the background; made by
/// [`Client::view`](crate::Client::view).
///
/// Cheap to clone: clones share the background task, which stops when the last one is
/// dropped. Each clone waits for changes on its own with [`ServiceView::changed`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// # let server_address = listener.local_addr()?;
/// # let stop = tokio_util::sync::CancellationToken::new();
/// # let server = tokio::spawn(discovery_server::server::run(listener, Default::default(), stop.clone()));
/// use discovery_client::{Client, ServiceSpec, ViewStatus};
///
/// let client = Client::builder().address(server_address).build()?;
/// let mut billing = client.view("billing").await?;
/// assert!(billing.instances().is_empty());
/// assert_eq!(billing.status(), ViewStatus::Current);
///
/// // A billing instance starts somewhere; the view learns of it without polling.
/// let id = client.register_once(&ServiceSpec::new("billing", "127.0.0.1:8080".parse()?)).await?.id;
/// while !billing.instances().iter().any(|instance| instance.id == id) {
///     billing.changed().await?;
/// }
///
/// // A caller picks an instance from the local list: no round trip to the registry.
/// let instances = billing.instances();
/// let pick = &instances[0];
/// assert_eq!((pick.ip.to_string(), pick.port), ("127.0.0.1".to_owned(), 8080));
/// # drop((billing, client));
/// # stop.cancel();
/// # server.await??;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ServiceView {
    service_type: Arc<str>,
    state: watch::Receiver<ViewState>,
}

impl ServiceView {
    /// Builds the view from the watch's first snapshot and starts its task.
    pub(crate) async fn start(mut watch: Watch) -> Result<ServiceView, Error> {
        let service_type: Arc<str> = Arc::from(watch.service_type());
        let (revision, instances) = match watch.recv().await {
            Some(WatchEvent::Snapshot {
                revision,
                instances,
                ..
            }) => (revision, instances),
            other => {
                return Err(Error::UnexpectedResponse {
                    request: "Watch",
                    response: format!("{other:?} before a snapshot"),
                });
            }
        };
        let mut follower = Follower {
            instances: BTreeMap::new(),
            revision,
            status: ViewStatus::Current,
        };
        follower.replace(instances);
        let (publish, state) = watch::channel(ViewState {
            instances: follower.list(),
            revision,
            status: ViewStatus::Current,
        });
        tokio::spawn(follower.run(watch, publish));
        Ok(ServiceView {
            service_type,
            state,
        })
    }

    /// The watched type.
    pub fn service_type(&self) -> &str {
        &self.service_type
    }

    /// The instances as last known, sorted by id: the live ones while the view is
    /// [`Current`](ViewStatus::Current), the last known ones otherwise. Cheap: a shared
    /// list, replaced (not changed) when the type changes.
    pub fn instances(&self) -> Arc<[Instance]> {
        Arc::clone(&self.state.borrow().instances)
    }

    /// The type's revision the list is as of.
    pub fn revision(&self) -> Revision {
        self.state.borrow().revision
    }

    /// How current the list is.
    pub fn status(&self) -> ViewStatus {
        self.state.borrow().status
    }

    /// True when the view is connected and following every change.
    pub fn is_current(&self) -> bool {
        self.status() == ViewStatus::Current
    }

    /// Waits until the list, the revision or the status changed since this handle last
    /// waited (or was cloned), and marks the change seen.
    ///
    /// Fails with [`Error::Closed`] once the view can never change again: its watch ended.
    pub async fn changed(&mut self) -> Result<(), Error> {
        self.state.changed().await.map_err(|_| Error::Closed {
            reason: format!("the view of {} has ended", self.service_type),
        })
    }
}

/// The background task's state: the instances by id.
struct Follower {
    instances: BTreeMap<Uuid, Instance>,
    revision: Revision,
    status: ViewStatus,
}

impl Follower {
    /// Applies events until the watch ends or every handle is gone.
    async fn run(mut self, mut watch: Watch, publish: watch::Sender<ViewState>) {
        loop {
            let event = tokio::select! {
                () = publish.closed() => return,
                event = watch.recv() => event,
            };
            let mut ended = false;
            let mut list_changed = false;
            let mut next = event;
            loop {
                match next {
                    Some(event) => list_changed |= self.apply(event),
                    None => {
                        self.status = ViewStatus::Ended;
                        ended = true;
                        break;
                    }
                }
                // Apply whatever else is ready before publishing once.
                match watch.recv().now_or_never() {
                    Some(event) => next = event,
                    None => break,
                }
            }
            let list = list_changed.then(|| self.list());
            publish.send_if_modified(|state| {
                let before = (state.revision, state.status);
                if let Some(list) = list {
                    state.instances = list;
                }
                state.revision = self.revision;
                state.status = self.status;
                list_changed || before != (state.revision, state.status)
            });
            if ended {
                return;
            }
        }
    }

    /// Applies one event; true when the list changed.
    fn apply(&mut self, event: WatchEvent) -> bool {
        match event {
            WatchEvent::Snapshot {
                revision,
                instances,
                ..
            } => {
                self.revision = revision;
                self.status = ViewStatus::Current;
                self.replace(instances);
                true
            }
            WatchEvent::Added { revision, instance } => {
                self.revision = revision;
                self.instances.insert(instance.id, instance);
                true
            }
            WatchEvent::Updated { revision, instance } => {
                self.revision = revision;
                self.instances.insert(instance.id, instance);
                true
            }
            WatchEvent::Removed {
                revision, instance, ..
            } => {
                self.revision = revision;
                self.instances.remove(&instance.id).is_some()
            }
            WatchEvent::Resumed { .. } => {
                self.status = ViewStatus::Current;
                false
            }
            WatchEvent::Disconnected { .. } => {
                self.status = ViewStatus::Disconnected;
                false
            }
            WatchEvent::Lagged => {
                self.status = ViewStatus::Lagging;
                false
            }
        }
    }

    fn replace(&mut self, instances: Vec<Instance>) {
        self.instances = instances
            .into_iter()
            .map(|instance| (instance.id, instance))
            .collect();
    }

    fn list(&self) -> Arc<[Instance]> {
        self.instances.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use discovery_proto::{Instance, Request, Response};

    use crate::testing::ScriptServer;
    use crate::testing::script::{entry, metadata, revision};
    use crate::{Client, ViewStatus};

    #[tokio::test(start_paused = true)]
    async fn a_view_applies_an_update_in_place() {
        let mut servers = ScriptServer::new(&["a"]);
        let client = servers.client(Client::builder());
        let opening = tokio::spawn({
            let client = client.clone();
            async move { client.view("billing").await }
        });
        let mut peer = servers.accept_welcomed("a", Duration::from_secs(5)).await;
        let watch = peer.recv().await;
        assert!(matches!(watch.request, Request::Watch { .. }));
        let present = entry(8080, &[("version", "1")]);
        let other = entry(8081, &[]);
        let snapshot = Response::Snapshot {
            revision: revision(1),
            reset: false,
            instances: vec![present.clone(), other.clone()],
            more: false,
        };
        peer.send(watch.request_id, snapshot).await;
        let mut view = opening.await.unwrap().unwrap();
        assert_eq!(view.instances().len(), 2);
        assert!(view.instances().iter().all(|i| i.service_type == "billing"));

        let mut updated = Instance::from_entry("billing", present.clone());
        updated.metadata = metadata(&[("version", "2")]);
        let push = Response::Updated {
            revision: revision(2),
            instance: updated.clone(),
        };
        peer.send(watch.request_id, push).await;
        view.changed().await.unwrap();
        assert_eq!(view.revision(), revision(2));
        assert_eq!(view.status(), ViewStatus::Current);
        let instances = view.instances();
        assert_eq!(instances.len(), 2, "replaced, not added");
        let found = instances.iter().find(|i| i.id == present.id).unwrap();
        assert_eq!(found, &updated);
        assert!(instances.iter().any(|i| i.id == other.id));
    }
}
