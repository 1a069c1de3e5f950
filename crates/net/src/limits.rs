//! Connection caps: one for the whole process, one per client IP.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Why a connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The process serves as many connections as it may.
    TooManyConnections,
    /// This client IP has as many connections as it may.
    TooManyFromAddress,
}

/// Counts connections, globally and per IP. Cheap to clone; clones share counts.
#[derive(Debug, Clone)]
pub struct ConnectionLimiter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    max_total: usize,
    max_per_ip: usize,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

impl ConnectionLimiter {
    /// A limiter allowing `max_total` connections, `max_per_ip` from any one IP.
    pub fn new(max_total: usize, max_per_ip: usize) -> Self {
        ConnectionLimiter {
            inner: Arc::new(Inner {
                max_total,
                max_per_ip,
                counts: Mutex::new(Counts::default()),
            }),
        }
    }

    /// Takes a slot for a connection from `ip`, or says why not. The slot
    /// is given back when the permit is dropped.
    pub fn try_acquire(&self, ip: IpAddr) -> Result<ConnectionPermit, Refusal> {
        let mut counts = self.inner.counts.lock().unwrap_or_else(|p| p.into_inner());
        if counts.total >= self.inner.max_total {
            return Err(Refusal::TooManyConnections);
        }
        let from_ip = counts.per_ip.entry(ip).or_insert(0);
        if *from_ip >= self.inner.max_per_ip {
            return Err(Refusal::TooManyFromAddress);
        }
        *from_ip += 1;
        counts.total += 1;
        Ok(ConnectionPermit {
            limiter: self.clone(),
            ip,
        })
    }

    /// Connections currently held (all IPs).
    pub fn active(&self) -> usize {
        self.inner
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .total
    }
}

/// A held connection slot.
#[derive(Debug)]
pub struct ConnectionPermit {
    limiter: ConnectionLimiter,
    ip: IpAddr,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut counts = self
            .limiter
            .inner
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        counts.total -= 1;
        if let Some(n) = counts.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.per_ip.remove(&self.ip);
            }
        }
    }
}

/// Failed logins per client IP, shared by every session of a service, so
/// that a password guesser gains nothing by reconnecting. Each service keeps
/// its own (a POP3 guesser is counted by POP3, an SMTP one by SMTP).
#[derive(Debug, Default)]
pub struct AuthThrottle {
    failures: Mutex<HashMap<IpAddr, (usize, Instant)>>,
}

impl AuthThrottle {
    /// Whether `ip` has used up its failures in the current window.
    pub fn is_blocked(&self, ip: IpAddr, max: usize, window: Duration) -> bool {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&ip) {
            Some((_, since)) if since.elapsed() > window => {
                map.remove(&ip);
                false
            }
            Some((n, _)) => *n >= max,
            None => false,
        }
    }

    /// Counts one failure for `ip`.
    pub fn record_failure(&self, ip: IpAddr, window: Duration) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 100_000 {
            // Bounded memory under a distributed attack: forget expired entries.
            map.retain(|_, (_, since)| since.elapsed() <= window);
        }
        let entry = map.entry(ip).or_insert((0, Instant::now()));
        if entry.1.elapsed() > window {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_apply_per_ip_and_in_total() {
        let l = ConnectionLimiter::new(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let a1 = l.try_acquire(a).unwrap();
        let _a2 = l.try_acquire(a).unwrap();
        assert_eq!(l.try_acquire(a).unwrap_err(), Refusal::TooManyFromAddress);
        let _b1 = l.try_acquire(b).unwrap();
        assert_eq!(l.try_acquire(b).unwrap_err(), Refusal::TooManyConnections);
        drop(a1);
        assert_eq!(l.active(), 2);
        let _b2 = l.try_acquire(b).unwrap();
        assert_eq!(l.active(), 3);
    }
}
