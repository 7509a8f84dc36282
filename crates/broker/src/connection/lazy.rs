//! Sets of futures made at their first push. `FuturesOrdered` and
//! `FuturesUnordered` allocate as they are created, and every connection
//! holds two: an idle connection, which never pushes, should not pay for
//! them.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::stream::{FuturesOrdered, FuturesUnordered};
use futures::{Stream, StreamExt};

/// `S`, made when first needed; empty until then.
pub(super) struct Lazy<S>(Option<S>);

impl<S> Default for Lazy<S> {
    fn default() -> Self {
        Lazy(None)
    }
}

impl<F: Future> Lazy<FuturesOrdered<F>> {
    /// Adds a future whose output comes after those pushed before.
    pub fn push_back(&mut self, future: F) {
        self.0
            .get_or_insert_with(FuturesOrdered::new)
            .push_back(future);
    }

    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, FuturesOrdered::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<F: Future> Lazy<FuturesUnordered<F>> {
    /// Adds a future.
    pub fn push(&mut self, future: F) {
        self.0
            .get_or_insert_with(FuturesUnordered::new)
            .push(future);
    }

    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, FuturesUnordered::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<S: Stream + Unpin> Stream for Lazy<S> {
    type Item = S::Item;

    /// As the set's own: `None` while nothing was ever pushed.
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        match &mut self.0 {
            Some(set) => set.poll_next_unpin(cx),
            None => Poll::Ready(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    #[tokio::test]
    async fn nothing_is_allocated_until_a_push_and_outputs_keep_their_order() {
        let mut set: Lazy<FuturesOrdered<futures::future::Ready<u8>>> = Lazy::default();
        assert!(set.0.is_none());
        assert_eq!(set.next().now_or_never(), Some(None), "empty, like the set");
        set.push_back(futures::future::ready(1));
        set.push_back(futures::future::ready(2));
        assert_eq!(set.len(), 2);
        assert_eq!(set.next().await, Some(1));
        assert_eq!(set.next().await, Some(2));
        assert!(set.is_empty());
    }

    #[tokio::test]
    async fn an_unordered_set_counts_what_it_holds() {
        let mut set: Lazy<FuturesUnordered<futures::future::Ready<()>>> = Lazy::default();
        assert!(set.is_empty());
        set.push(futures::future::ready(()));
        assert_eq!(set.len(), 1);
        assert_eq!(set.next().await, Some(()));
        assert!(set.is_empty());
    }
}
