//! At most once: core NATS publish/subscribe ([`Delivery::AtMostOnce`]).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_util::{FutureExt as _, StreamExt as _};

use super::{count_drop, Link, News, Outgoing, Receiver, BATCH, SEND_TIMEOUT};

/// An event waiting to be written.
struct Pending {
    seq: u64,
    subject: async_nats::Subject,
    bytes: bytes::Bytes,
}

struct Core {
    link: Link,
    /// Oldest first; the first `sent` were handed to the client.
    pending: VecDeque<Pending>,
    sent: usize,
    subscriptions: HashMap<String, tokio::sync::oneshot::Sender<()>>,
    /// One-per-service groups: a queue subscription per (group, subject).
    queue_subscriptions: HashMap<(Arc<str>, String), tokio::sync::oneshot::Sender<()>>,
    /// The connection was lost since the last `Connected`.
    lost: bool,
}

pub(super) async fn run(link: Link) {
    let mut core = Core {
        link,
        pending: VecDeque::new(),
        sent: 0,
        subscriptions: HashMap::new(),
        queue_subscriptions: HashMap::new(),
        lost: false,
    };
    core.resubscribe().await;
    loop {
        core.link.linger().await;
        let link = &mut core.link;
        tokio::select! {
            biased;
            _ = link.stopped.changed() => break,
            Some(event) = link.events.recv() => match link.on_client_event(event).await {
                News::Connected => core.on_connected().await,
                News::Disconnected => core.lost = true,
                News::Other => {}
            },
            Ok(()) = link.interest.changed() => core.resubscribe().await,
            Some(first) = link.outgoing.recv() => {
                core.enqueue(first);
                while core.pending.len() < core.link.options.buffer + BATCH {
                    match core.link.outgoing.try_recv() {
                        Some(next) => core.enqueue(next),
                        None => break,
                    }
                }
                core.publish_pending().await;
            }
        }
    }
    // Closing: a last chance for what is buffered.
    while let Some(next) = core.link.outgoing.try_recv() {
        core.enqueue(next);
    }
    if core.link.is_connected() {
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(2), core.publish_pending()).await;
    }
    if !core.pending.is_empty() {
        tracing::warn!(
            unsent = core.pending.len(),
            "NATS link closed with events not sent"
        );
    }
    for (_, stop) in core.subscriptions.drain() {
        let _ = stop.send(());
    }
    for (_, stop) in core.queue_subscriptions.drain() {
        let _ = stop.send(());
    }
}

impl Core {
    async fn on_connected(&mut self) {
        // Everything not written goes again.
        self.sent = 0;
        self.publish_pending().await;
        // Subscriptions are sent again on reconnection, before
        // `Connected`: once the server has them, say so.
        self.barrier().await;
        self.link.announce_ready();
        // At most once: what other processes sent meanwhile is lost to
        // this one, and so are the runtime sets among it. Ask for those
        // (every process answers with its sets; stamps make the copies
        // harmless), as an IPC rejoin does.
        if std::mem::take(&mut self.lost) {
            self.link.bus.notify(crate::config::SYNC_EVENT, ());
        }
    }

    fn enqueue(&mut self, outgoing: Outgoing) {
        if self.pending.len() >= self.link.options.buffer
            && !crate::config::is_control_event(&outgoing.name)
        {
            count_drop(
                &self.link.shared.stats.dropped,
                "buffer full",
                &outgoing.name,
            );
            return;
        }
        let (seq, subject, bytes) = self.link.wrap(outgoing);
        self.pending.push_back(Pending {
            seq,
            subject,
            bytes,
        });
        self.link.shared.update_buffered(self.pending.len());
    }

    /// Hands what was not sent yet to the client, then flushes (the bytes
    /// reached the server's socket). Never waits long: while the client
    /// reconnects it stops taking commands, and this loop must keep
    /// serving `stop`.
    async fn publish_pending(&mut self) {
        if !self.link.is_connected() {
            return;
        }
        let client = self.link.client.clone();
        let shared = self.link.shared.clone();
        while self.sent < self.pending.len() {
            let upto = (self.sent + BATCH).min(self.pending.len());
            let mut index = self.sent;
            let pending = &mut self.pending;
            // One deadline for the batch (a timer per event costs more
            // than the publish).
            let published = tokio::time::timeout(SEND_TIMEOUT, async {
                while index < upto.min(pending.len()) {
                    let item = &pending[index];
                    match client
                        .publish(item.subject.clone(), item.bytes.clone())
                        .await
                    {
                        Ok(()) => index += 1,
                        Err(error)
                            if matches!(
                                error.kind(),
                                async_nats::client::PublishErrorKind::MaxPayloadExceeded
                                    | async_nats::client::PublishErrorKind::InvalidSubject
                            ) =>
                        {
                            // Never sendable: drop it, or it would block the rest.
                            shared.stats.oversize.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(seq = item.seq, %error, "event not sent over NATS");
                            pending.remove(index);
                        }
                        Err(error) => return Err(error),
                    }
                }
                Ok(())
            })
            .await;
            match published {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::debug!(%error, "NATS publish failed; kept for a resend");
                    self.sent = index;
                    return;
                }
                Err(_) => {
                    tracing::debug!("NATS publish timed out; kept for a resend");
                    self.sent = index;
                    return;
                }
            }
            self.sent = index;
            match tokio::time::timeout(SEND_TIMEOUT, client.flush()).await {
                Ok(Ok(())) => {
                    let flushed = self.sent;
                    self.pending.drain(..flushed);
                    self.sent = 0;
                    shared
                        .stats
                        .sent
                        .fetch_add(flushed as u64, Ordering::Relaxed);
                    shared.update_buffered(self.pending.len());
                }
                Ok(Err(error)) => {
                    tracing::debug!(%error, "NATS flush failed; events kept for a resend");
                    return;
                }
                Err(_) => {
                    tracing::debug!("NATS flush timed out; events kept for a resend");
                    return;
                }
            }
        }
    }

    /// Returns once the server has processed everything this connection
    /// sent before (a flush only writes): a request nobody answers comes
    /// back "no responders" after the server went through the earlier
    /// commands, subscriptions included. The subject is this service's.
    async fn barrier(&self) {
        if !self.link.is_connected() {
            return;
        }
        let subject = format!(
            "_SERVE_COMMON.{}.barrier.{:x}",
            self.link.options.subject_prefix, self.link.origin
        );
        let _ = tokio::time::timeout(
            SEND_TIMEOUT * 5,
            self.link.client.request(subject, bytes::Bytes::new()),
        )
        .await;
    }

    /// Makes the subscriptions match the registrations: new ones first,
    /// in place on the server, then the stale ones unsubscribed and
    /// drained (an event that comes through both is delivered once: the
    /// receiver drops a sender's numbers it has seen).
    async fn resubscribe(&mut self) {
        let wanted = self.link.wanted_subjects();
        let current: BTreeSet<String> = self.subscriptions.keys().cloned().collect();
        let mut added = false;
        for subject in wanted.difference(&current) {
            if let Some(stop) = self.subscribe_task(subject.clone()).await {
                self.subscriptions.insert(subject.clone(), stop);
                added = true;
            }
        }
        if added {
            self.barrier().await;
        }
        for subject in current.difference(&wanted) {
            if let Some(stop) = self.subscriptions.remove(subject) {
                let _ = stop.send(());
                tracing::debug!(%subject, "NATS subscription removed");
            }
        }
        self.resubscribe_groups().await;
    }

    /// One queue subscription per one-per-service group and subject: the
    /// server hands each message to one member of the queue group.
    async fn resubscribe_groups(&mut self) {
        let prefix = self.link.options.subject_prefix.clone();
        let wanted: BTreeSet<(Arc<str>, String)> = self
            .link
            .bus
            .shared_interest()
            .into_iter()
            .flat_map(|group| {
                super::subjects(&prefix, &group.interest)
                    .into_iter()
                    .map(move |subject| (group.key.clone(), subject))
            })
            .collect();
        let current: BTreeSet<(Arc<str>, String)> =
            self.queue_subscriptions.keys().cloned().collect();
        for (key, subject) in wanted.difference(&current) {
            if let Some(stop) = self.queue_task(key.clone(), subject.clone()).await {
                self.queue_subscriptions
                    .insert((key.clone(), subject.clone()), stop);
            }
        }
        for stale in current.difference(&wanted) {
            if let Some(stop) = self.queue_subscriptions.remove(stale) {
                let _ = stop.send(());
            }
        }
    }

    async fn queue_task(
        &mut self,
        key: Arc<str>,
        subject: String,
    ) -> Option<tokio::sync::oneshot::Sender<()>> {
        let group = super::group_name(&key);
        let mut subscriber = self.subscribe(&subject, Some(&group)).await?;
        let receiver: Arc<Receiver> = self.link.receiver.clone();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    message = subscriber.next() => match message {
                        Some(message) => {
                            // At most once: nothing to acknowledge.
                            let _ = receiver.receive_shared(
                                &key,
                                &message.subject,
                                message.headers.as_ref(),
                                &message.payload,
                                Box::new(|outcome| {
                                    if matches!(outcome, crate::event::SharedOutcome::NotHere) {
                                        tracing::warn!("a one-per-service event reached a process that no longer runs its handlers: lost");
                                    }
                                }),
                            );
                        }
                        None => return,
                    },
                    _ = &mut stopped => break,
                }
            }
            let _ = subscriber.unsubscribe().await;
        });
        tracing::debug!(%subject, %group, "NATS queue subscription added");
        Some(stop)
    }

    /// Subscribes to `subject` (in the queue group `queue`, if given),
    /// within [`SEND_TIMEOUT`]; a failure is logged (tried again at the
    /// next registration change).
    async fn subscribe(
        &self,
        subject: &str,
        queue: Option<&str>,
    ) -> Option<async_nats::Subscriber> {
        let client = &self.link.client;
        let subscribed = match queue {
            Some(queue) => {
                let request = client.queue_subscribe(subject.to_owned(), queue.to_owned());
                tokio::time::timeout(SEND_TIMEOUT, request).await
            }
            None => tokio::time::timeout(SEND_TIMEOUT, client.subscribe(subject.to_owned())).await,
        };
        match subscribed {
            Ok(Ok(subscriber)) => Some(subscriber),
            Ok(Err(error)) => {
                tracing::error!(%subject, ?queue, %error, "cannot subscribe on NATS");
                None
            }
            Err(_) => {
                tracing::warn!(%subject, "NATS subscribe timed out; retried at the next change");
                None
            }
        }
    }

    /// Subscribes to `subject`; a task hands its messages to the receiver
    /// until told to stop (through the returned sender), then unsubscribes
    /// and drains what is left.
    async fn subscribe_task(
        &mut self,
        subject: String,
    ) -> Option<tokio::sync::oneshot::Sender<()>> {
        let mut subscriber = self.subscribe(&subject, None).await?;
        let receiver: Arc<Receiver> = self.link.receiver.clone();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let receive = |message: async_nats::Message| {
                receiver.receive(&message.subject, message.headers.as_ref(), &message.payload);
            };
            loop {
                tokio::select! {
                    message = subscriber.next() => match message {
                        Some(message) => {
                            receive(message);
                            // What else is there, without a turn of the
                            // loop each.
                            while let Some(Some(message)) = subscriber.next().now_or_never() {
                                receive(message);
                            }
                        }
                        None => return,
                    },
                    _ = &mut stopped => break,
                }
            }
            let _ = subscriber.unsubscribe().await;
            while let Some(message) = subscriber.next().await {
                receive(message);
            }
        });
        tracing::debug!(%subject, "NATS subscription added");
        Some(stop)
    }
}
