//! How news of a download reaches the clients following it: handed on from
//! one client to the next, never to all of them at once.
//!
//! Why: in a rollout, two thousand clients follow one download and all of
//! them have read everything it has so far. If each new piece woke all of
//! them at once (a `watch` channel does), two thousand tasks would stand in
//! the runtime's queue, each with a socket write to make, and a request for
//! something already cached that arrives just then would wait behind the
//! whole wave: tens of milliseconds instead of a fraction of one.
//!
//! So the publisher wakes only the client that has waited longest. That
//! client looks at the news, first wakes the next waiting client, and then
//! writes its own piece: the news travels down the line of waiting clients
//! like a baton, one or two of them ready to run at a time, and the rest of
//! the runtime (another worker, a new request) is never queued behind it. A
//! line that cannot keep up with the download simply holds several batons,
//! one per piece published while it was under way.
//!
//! Why no client is ever forgotten: clients join the line in the order they
//! looked, and each looks only after joining, so a client in the line has
//! seen no less than anyone ahead of it. Each publication wakes the head of
//! the line; a woken client with news passes the baton on; a woken client
//! without news ends the relay, and then everyone behind it has seen the
//! news too. A client that leaves while woken but not yet running hands its
//! wake-up on (tokio's `Notify` does so for `notify_one`).

use std::sync::Arc;

use tokio::sync::Notify;
use tokio::sync::futures::Notified;

use super::window::Seats;

/// The line of clients waiting for news of one download, and how far each
/// client has read (see `window`); cheap to clone.
#[derive(Clone, Debug, Default)]
pub(super) struct Relay {
    news: Arc<Notify>,
    seats: Arc<Seats>,
}

impl Relay {
    /// Tells the line that there is news: wakes the client waiting longest.
    pub(super) fn announce(&self) {
        self.news.notify_one();
    }

    /// Every client's place in the download.
    pub(super) fn seats(&self) -> &Arc<Seats> {
        &self.seats
    }

    /// A place at the back of the line. A client takes its place with
    /// `enable()` before it looks for news, so that news published after
    /// the look reaches it; `enable()` returning true means a wake-up was
    /// already waiting, which then belongs to this client as if it had
    /// been woken.
    pub(super) fn place(&self) -> Notified<'_> {
        self.news.notified()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use bytes::Bytes;
    use futures_util::StreamExt;
    use futures_util::task::ArcWake;
    use tokio::sync::watch;

    use super::super::flight::{FlightError, Origin, Progress, Publisher};
    use super::super::read::{ByteStream, follow};
    use super::super::view::View;
    use super::*;

    const SIZE: u64 = 3_000_000;
    const FOLLOWERS: usize = 200;

    fn download() -> (Publisher, watch::Receiver<Progress>, Bytes) {
        let data: Bytes = (0..SIZE)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>()
            .into();
        let (sender, progress) = watch::channel(Progress::Connecting);
        let publisher = Publisher::new(sender);
        publisher.replace(Progress::Streaming {
            view: View::Mapped(data.clone()),
            size: Some(SIZE),
            readable: 0,
            origin: Origin::Upstream,
            relay: publisher.relay().clone(),
        });
        (publisher, progress, data)
    }

    fn followers(progress: &watch::Receiver<Progress>, relay: &Relay) -> Vec<ByteStream> {
        let gauge = prometheus::IntGauge::new("followers", "followers").unwrap();
        (0..FOLLOWERS)
            .map(|_| {
                let counted = crate::metrics::GaugeHeld::new(&gauge);
                let seat = relay.seats().take(0).unwrap();
                follow(progress.clone(), relay.clone(), seat, 0, u64::MAX, counted)
            })
            .collect()
    }

    fn publish(publisher: &Publisher, readable: u64) {
        publisher.modify(|state| {
            if let Progress::Streaming { readable: r, .. } = state {
                *r = readable;
            }
        });
    }

    /// Wakes a follower by queueing its index, as a runtime queues a task.
    struct Queued {
        index: usize,
        ready: Arc<Mutex<VecDeque<usize>>>,
    }

    impl ArcWake for Queued {
        fn wake_by_ref(this: &Arc<Self>) {
            this.ready.lock().unwrap().push_back(this.index);
        }
    }

    /// Each publication wakes one follower and each follower wakes at most
    /// the next, so at most two stand ready at any moment (a wake-up for
    /// all would make all of them ready at once); and every follower still
    /// gets every byte. The followers are polled by hand, in the order they
    /// are woken, as a runtime would.
    #[test]
    fn news_goes_down_the_line_and_reaches_every_follower() {
        let (publisher, progress, data) = download();
        let mut streams = followers(&progress, publisher.relay());
        let ready = Arc::new(Mutex::new(VecDeque::from_iter(0..FOLLOWERS)));
        let wakers: Vec<_> = (0..FOLLOWERS)
            .map(|index| {
                let ready = ready.clone();
                futures_util::task::waker(Arc::new(Queued { index, ready }))
            })
            .collect();
        let mut got = vec![Vec::new(); FOLLOWERS];
        let mut ended = 0;
        let mut most_ready = 0;
        let mut run = |most_ready: &mut usize| loop {
            let Some(index) = ready.lock().unwrap().pop_front() else {
                return;
            };
            *most_ready = (*most_ready).max(ready.lock().unwrap().len() + 1);
            let mut cx = Context::from_waker(&wakers[index]);
            while let Poll::Ready(piece) = streams[index].poll_next_unpin(&mut cx) {
                match piece {
                    Some(piece) => got[index].extend_from_slice(&piece.unwrap()),
                    None => {
                        ended += 1;
                        break;
                    }
                }
            }
        };
        run(&mut most_ready);
        most_ready = 0;
        for step in 1..=20 {
            publish(&publisher, SIZE * step / 20);
            run(&mut most_ready);
        }
        publisher.modify(|state| {
            if let Progress::Streaming { view, relay, .. } = state {
                *state = Progress::Done {
                    view: view.clone(),
                    size: SIZE,
                    origin: Origin::Upstream,
                    relay: relay.clone(),
                };
            }
        });
        run(&mut most_ready);
        assert_eq!(ended, FOLLOWERS, "every follower read to the end");
        assert!(got.iter().all(|got| *got == data), "every byte, in order");
        assert!(
            most_ready <= 2,
            "{most_ready} followers stood ready at once"
        );
    }

    /// A download that ends without a final state ends its followers'
    /// bodies in an error instead of leaving them waiting.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_abandoned_download_fails_every_follower() {
        let (publisher, progress, _) = download();
        let streams = followers(&progress, publisher.relay());
        publish(&publisher, SIZE / 2);
        let clients: Vec<_> = streams
            .into_iter()
            .map(|mut stream| {
                tokio::spawn(async move {
                    let mut read = 0;
                    while let Some(piece) = stream.next().await {
                        match piece {
                            Ok(piece) => read += piece.len() as u64,
                            Err(e) => return (read, Some(e.to_string())),
                        }
                    }
                    (read, None)
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(publisher);
        for client in clients {
            let (read, error) = tokio::time::timeout(Duration::from_secs(10), client)
                .await
                .expect("a follower hung")
                .unwrap();
            assert_eq!(read, SIZE / 2);
            assert_eq!(error.as_deref(), Some(&*FlightError::Abandoned.to_string()));
        }
    }
}
