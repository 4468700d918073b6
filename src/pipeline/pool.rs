//! The block buffers between the producer and the drive writer.
//!
//! Buffers are allocated on demand up to the configured count, and reused
//! most-recently-returned first: when the drive keeps up, only a few
//! buffers are ever touched (warm in cache, little resident memory); when
//! it falls behind, the pool fills up to its bound and the producer waits.

use std::sync::{Condvar, Mutex};

pub struct BufferPool {
    state: Mutex<PoolState>,
    available: Condvar,
    block_size: usize,
}

struct PoolState {
    free: Vec<Vec<u8>>,
    /// Buffers that may still be allocated.
    unallocated: usize,
    /// The consumer is gone: takers get nothing.
    closed: bool,
}

impl BufferPool {
    pub fn new(count: usize, block_size: usize) -> Self {
        BufferPool {
            state: Mutex::new(PoolState {
                free: Vec::new(),
                unallocated: count,
                closed: false,
            }),
            available: Condvar::new(),
            block_size,
        }
    }

    /// An empty buffer, waiting while all are in use. `None` once closed.
    pub fn take(&self) -> Option<Vec<u8>> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if s.closed {
                return None;
            }
            if let Some(mut b) = s.free.pop() {
                b.clear();
                return Some(b);
            }
            if s.unallocated > 0 {
                s.unallocated -= 1;
                return Some(Vec::with_capacity(self.block_size));
            }
            s = self.available.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Allocate up to `n` more buffers now and touch their memory, so the
    /// producer does not take their page faults while it fills the start
    /// of the buffer (run on a core that is idle then: the drive writer is
    /// waiting for that fill). Stops early once the pool is closed or fully
    /// allocated; never allocates beyond the pool's bound.
    pub fn prefault(&self, n: usize) {
        for _ in 0..n {
            {
                let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                if s.closed || s.unallocated == 0 {
                    return;
                }
                s.unallocated -= 1;
            }
            // A non-zero fill is written byte by byte; a zero one would be
            // calloc'd, its pages mapped lazily by the producer after all.
            let b = vec![1u8; self.block_size];
            self.give(b);
        }
    }

    /// Return a buffer for reuse.
    pub fn give(&self, buf: Vec<u8>) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.free.push(buf);
        drop(s);
        self.available.notify_one();
    }

    /// The consumer stopped: wake and refuse every taker.
    pub fn close(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.closed = true;
        drop(s);
        self.available.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_last_in_first_out_and_bounded() {
        let pool = BufferPool::new(3, 16);
        let a = pool.take().unwrap();
        let a_ptr = a.as_ptr();
        let b = pool.take().unwrap();
        let _c = pool.take().unwrap();
        pool.give(b);
        pool.give(a);
        let again = pool.take().unwrap();
        assert_eq!(again.as_ptr(), a_ptr, "most recent first");
    }

    #[test]
    fn prefaulting_stays_within_the_bound() {
        let pool = BufferPool::new(3, 16);
        let first = pool.take().unwrap();
        pool.prefault(10);
        {
            let s = pool.state.lock().unwrap();
            assert_eq!((s.unallocated, s.free.len()), (0, 2));
            assert!(s.free.iter().all(|b| b.capacity() >= 16));
        }
        let a = pool.take().unwrap();
        assert!(a.is_empty(), "handed out empty");
        pool.close();
        pool.prefault(1);
        assert_eq!(pool.state.lock().unwrap().free.len(), 1);
        drop((first, a));
    }

    #[test]
    fn closing_wakes_a_waiting_taker() {
        let pool = BufferPool::new(1, 16);
        let _only = pool.take().unwrap();
        std::thread::scope(|s| {
            let waiter = s.spawn(|| pool.take());
            pool.close();
            assert!(waiter.join().unwrap().is_none());
        });
    }
}
