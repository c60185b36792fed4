//! One object read as parts fetched in parallel and delivered in order.
//!
//! A window of at most `concurrency` parts is in flight: the oldest (the
//! head) streams its chunks to the reader as they arrive, the ones behind
//! it are fetched at the same time and buffered. When the head is done the
//! next part starts, so memory stays bounded by `concurrency` parts.
//! Each part runs in its own task, aborted when the stream is dropped.
//!
//! Nothing here knows about S3: a part is opened by an [`OpenPart`]
//! closure, so the ordering, bounds and failure rules are tested on their own.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::{BoxStream, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A part's bytes as they arrive; an `Err` ends the part and the read.
pub(super) type PartBody = BoxStream<'static, Result<Bytes, String>>;

/// Starts reading `len` bytes at offset `start`; resolves once the part's
/// bytes begin to flow.
pub(super) type OpenPart =
    Arc<dyn Fn(u64, u64) -> BoxFuture<'static, Result<PartBody, String>> + Send + Sync>;

/// An [`OpenPart`] from an async closure.
pub(super) fn opener<F, Fut>(open: F) -> OpenPart
where
    F: Fn(u64, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<PartBody, String>> + Send + 'static,
{
    Arc::new(move |start, len| Box::pin(open(start, len)))
}

/// How an object of `total` bytes is cut and read.
#[derive(Clone, Copy, Debug)]
pub(super) struct Plan {
    pub total: u64,
    pub part_size: u64,
    pub concurrency: usize,
    /// Longest wait for a part to open, or for its next bytes.
    pub timeout: Duration,
}

impl Plan {
    /// Bytes `start..start + len` of part `index`.
    fn part(&self, index: u64) -> (u64, u64) {
        let start = index * self.part_size;
        (start, self.part_size.min(self.total - start))
    }

    fn parts(&self) -> u64 {
        self.total.div_ceil(self.part_size)
    }
}

/// A part being fetched: its task pushes chunks into an unbounded channel,
/// which holds at most the part's length (longer parts are refused).
struct InFlight {
    start: u64,
    len: u64,
    received: u64,
    chunks: mpsc::UnboundedReceiver<Result<Bytes, String>>,
    task: JoinHandle<()>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The reader's state: the window of parts and the next one to start.
struct Parts {
    plan: Plan,
    open: OpenPart,
    next: u64,
    window: VecDeque<InFlight>,
}

/// Reads the object `plan` describes: part 0 from `first` (already open),
/// the rest through `open`. Yields the bytes in order and ends with the
/// object's last byte, or with one `Err` after which nothing follows.
pub(super) fn ordered(
    first: PartBody,
    plan: Plan,
    open: OpenPart,
) -> impl Stream<Item = Result<Bytes, String>> + Send + Unpin + 'static {
    let mut parts = Parts {
        plan,
        open,
        next: 0,
        window: VecDeque::new(),
    };
    if plan.total > 0 {
        parts.launch(Some(first));
    }
    while parts.window.len() < plan.concurrency.max(1) && parts.next < plan.parts() {
        parts.launch(None);
    }
    Box::pin(futures_util::stream::unfold(
        Some(parts),
        |state| async move {
            let mut parts = state?;
            match parts.next_chunk().await? {
                Ok(chunk) => Some((Ok(chunk), Some(parts))),
                // Dropping the parts aborts every task still running.
                Err(e) => Some((Err(e), None)),
            }
        },
    ))
}

impl Parts {
    /// Starts the next part, from `body` when it is already open.
    fn launch(&mut self, body: Option<PartBody>) {
        let (start, len) = self.plan.part(self.next);
        self.next += 1;
        let (tx, chunks) = mpsc::unbounded_channel();
        let open = self.open.clone();
        let timeout = self.plan.timeout;
        let task = tokio::spawn(async move {
            let body = match body {
                Some(body) => body,
                None => match tokio::time::timeout(timeout, open(start, len)).await {
                    Ok(Ok(body)) => body,
                    Ok(Err(e)) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                    Err(_) => {
                        let _ = tx.send(Err(format!(
                            "the part at byte {start} did not start within {timeout:?}"
                        )));
                        return;
                    }
                },
            };
            pump(body, start, len, timeout, tx).await;
        });
        self.window.push_back(InFlight {
            start,
            len,
            received: 0,
            chunks,
            task,
        });
    }

    /// The next bytes in order; `None` at the end of the object.
    async fn next_chunk(&mut self) -> Option<Result<Bytes, String>> {
        loop {
            let head = self.window.front_mut()?;
            match head.chunks.recv().await {
                Some(Ok(chunk)) => {
                    head.received += chunk.len() as u64;
                    return Some(Ok(chunk));
                }
                Some(Err(e)) => return Some(Err(e)),
                None if head.received != head.len => {
                    return Some(Err(format!(
                        "the part at byte {} ended after {} of its {} bytes",
                        head.start, head.received, head.len
                    )));
                }
                None => {
                    self.window.pop_front();
                    if self.next < self.plan.parts() {
                        self.launch(None);
                    }
                }
            }
        }
    }
}

/// Moves a part's chunks into its channel, bounding every wait by
/// `timeout` and refusing more than `len` bytes.
async fn pump(
    mut body: PartBody,
    start: u64,
    len: u64,
    timeout: Duration,
    tx: mpsc::UnboundedSender<Result<Bytes, String>>,
) {
    let mut received = 0u64;
    loop {
        let failure = match tokio::time::timeout(timeout, body.next()).await {
            Ok(Some(Ok(chunk))) => {
                received += chunk.len() as u64;
                if received > len {
                    format!("the part at byte {start} sent more than its {len} bytes")
                } else if tx.send(Ok(chunk)).is_err() {
                    return;
                } else {
                    continue;
                }
            }
            Ok(None) => return,
            Ok(Some(Err(e))) => e,
            Err(_) => format!("no bytes of the part at byte {start} for {timeout:?}"),
        };
        let _ = tx.send(Err(failure));
        return;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// An in-memory object served in parts, recording what was asked.
    struct Store {
        bytes: Bytes,
        chunk: usize,
        opened: Mutex<Vec<(u64, u64)>>,
        open_now: AtomicUsize,
        most_open: AtomicUsize,
        /// Parts that start and then stall forever, by offset.
        stall_at: Option<u64>,
    }

    /// Keeps a part counted as open until its body is dropped.
    struct Open(Arc<Store>);

    impl Drop for Open {
        fn drop(&mut self) {
            self.0.open_now.fetch_sub(1, Ordering::SeqCst);
        }
    }

    impl Store {
        fn new(len: usize, chunk: usize) -> Arc<Store> {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            Arc::new(Store {
                bytes: Bytes::from(bytes),
                chunk,
                opened: Mutex::default(),
                open_now: AtomicUsize::new(0),
                most_open: AtomicUsize::new(0),
                stall_at: None,
            })
        }

        fn body(self: &Arc<Self>, start: u64, len: u64) -> PartBody {
            let now = self.open_now.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_open.fetch_max(now, Ordering::SeqCst);
            let guard = Open(self.clone());
            let part = self.bytes.slice(start as usize..(start + len) as usize);
            let chunks: Vec<Result<Bytes, String>> = part
                .chunks(self.chunk)
                .map(|c| Ok(part.slice_ref(c)))
                .collect();
            let stall = self.stall_at == Some(start);
            futures_util::stream::iter(chunks)
                .then(move |c| {
                    let _ = &guard;
                    async move {
                        if stall {
                            std::future::pending::<()>().await;
                        }
                        tokio::task::yield_now().await;
                        c
                    }
                })
                .boxed()
        }

        fn opener(self: &Arc<Self>) -> OpenPart {
            let store = self.clone();
            opener(move |start, len| {
                store.opened.lock().unwrap().push((start, len));
                let body = store.body(start, len);
                async move { Ok(body) }
            })
        }
    }

    fn plan(total: usize, part_size: u64, concurrency: usize) -> Plan {
        Plan {
            total: total as u64,
            part_size,
            concurrency,
            timeout: Duration::from_millis(200),
        }
    }

    async fn read_all(store: &Arc<Store>, plan: Plan) -> Result<Vec<u8>, String> {
        let first = store.body(0, plan.part_size.min(plan.total));
        let mut stream = ordered(first, plan, store.opener());
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn parts_arrive_in_order_with_a_bounded_window() {
        let store = Store::new(10_000, 300);
        let got = read_all(&store, plan(10_000, 1_024, 3)).await.unwrap();
        assert_eq!(got, store.bytes);
        let opened = store.opened.lock().unwrap().clone();
        let starts: Vec<u64> = opened.iter().map(|(s, _)| *s).collect();
        assert_eq!(starts, (1..10).map(|i| i * 1_024).collect::<Vec<_>>());
        assert_eq!(opened.last(), Some(&(9 * 1_024, 10_000 - 9 * 1_024)));
        assert!(store.most_open.load(Ordering::SeqCst) <= 3);
    }

    #[tokio::test]
    async fn one_part_and_an_empty_object() {
        let store = Store::new(500, 64);
        assert_eq!(
            read_all(&store, plan(500, 1_024, 8)).await.unwrap(),
            store.bytes
        );
        assert!(store.opened.lock().unwrap().is_empty());
        let empty = Store::new(0, 64);
        assert!(
            read_all(&empty, plan(0, 1_024, 8))
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn a_short_part_fails_the_read() {
        let store = Store::new(4_096, 512);
        let short = {
            let store = store.clone();
            opener(move |start, len| {
                let body = store.body(start, len - 1);
                async move { Ok(body) }
            })
        };
        let mut stream = ordered(store.body(0, 1_024), plan(4_096, 1_024, 2), short);
        let mut last = None;
        while let Some(item) = stream.next().await {
            last = Some(item);
        }
        let err = last.unwrap().unwrap_err();
        assert!(err.contains("ended after 1023 of its 1024 bytes"), "{err}");
    }

    #[tokio::test]
    async fn a_stalled_part_fails_the_read_and_dropping_it_cancels_the_rest() {
        let mut store = Store::new(8_192, 512);
        Arc::get_mut(&mut store).unwrap().stall_at = Some(2_048);
        let err = read_all(&store, plan(8_192, 1_024, 4)).await.unwrap_err();
        assert!(err.contains("no bytes of the part at byte 2048"), "{err}");
        // The failed read dropped its window: no part is still being read.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(store.open_now.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_reader_that_goes_away_cancels_the_parts_in_flight() {
        // The part at 2048 stalls until its task is aborted (its own
        // timeout is 200 ms, far beyond the wait below).
        let mut store = Store::new(64 * 1_024, 256);
        Arc::get_mut(&mut store).unwrap().stall_at = Some(2_048);
        let first = store.body(0, 1_024);
        let mut stream = ordered(first, plan(64 * 1_024, 1_024, 4), store.opener());
        stream.next().await.unwrap().unwrap();
        drop(stream);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(store.open_now.load(Ordering::SeqCst), 0);
        assert!(store.opened.lock().unwrap().len() <= 4);
    }

    #[tokio::test]
    async fn a_part_that_fails_to_open_fails_the_read() {
        let store = Store::new(4_096, 512);
        let refused = opener(|start, _| async move { Err(format!("refused at {start}")) });
        let mut stream = ordered(store.body(0, 1_024), plan(4_096, 1_024, 2), refused);
        let mut got = 0;
        let err = loop {
            match stream.next().await.unwrap() {
                Ok(chunk) => got += chunk.len(),
                Err(e) => break e,
            }
        };
        assert_eq!((got, err.as_str()), (1_024, "refused at 1024"));
        assert!(stream.next().await.is_none(), "nothing after the error");
    }
}
