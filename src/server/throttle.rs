//! Failed-login throttling per client address: after `limit` failed logins within
//! `window`, the address's logins are refused, without looking at the password, until its
//! oldest failure in the window has aged out. An IPv6 client counts by its /64 (every
//! client owns one, and could otherwise use a new address per attempt). Loopback addresses
//! are exempt unless asked (tests and local tools log in from there).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Addresses tracked at most; beyond that, addresses with no recent failure are forgotten
/// and new ones are not tracked (the table never grows without bound).
const MAX_TRACKED: usize = 100_000;

#[derive(Debug, Clone, Copy)]
pub struct ThrottleConfig {
    /// Failures allowed per window (0: no throttling).
    pub limit: u32,
    pub window: Duration,
    /// Throttle loopback clients too.
    pub loopback: bool,
}

pub struct LoginThrottle {
    cfg: ThrottleConfig,
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl LoginThrottle {
    pub fn new(cfg: ThrottleConfig) -> Self {
        LoginThrottle {
            cfg,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// The address a remote `ip:port` throttles on, if throttled at all.
    fn key(&self, remote: &str) -> Option<IpAddr> {
        if self.cfg.limit == 0 {
            return None;
        }
        let ip = remote.parse::<SocketAddr>().ok()?.ip().to_canonical();
        (self.cfg.loopback || !ip.is_loopback()).then_some(network_of(ip))
    }

    /// Ok when `remote` may try to log in; else how long until it may.
    pub fn check(&self, remote: &str) -> Result<(), Duration> {
        let Some(ip) = self.key(remote) else {
            return Ok(());
        };
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let Some(times) = failures.get_mut(&ip) else {
            return Ok(());
        };
        let now = Instant::now();
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.cfg.window)
        {
            times.pop_front();
        }
        if times.len() < self.cfg.limit as usize {
            return Ok(());
        }
        let oldest = *times.front().expect("limit > 0");
        Err(self.cfg.window.saturating_sub(now.duration_since(oldest)))
    }

    /// Counts a failed login of `remote`.
    pub fn failed(&self, remote: &str) {
        let Some(ip) = self.key(remote) else {
            return;
        };
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if failures.len() >= MAX_TRACKED && !failures.contains_key(&ip) {
            let window = self.cfg.window;
            failures.retain(|_, t| t.back().is_some_and(|l| now.duration_since(*l) < window));
            if failures.len() >= MAX_TRACKED {
                return;
            }
        }
        let times = failures.entry(ip).or_default();
        times.push_back(now);
        // Only the last `limit` failures matter.
        while times.len() > self.cfg.limit as usize {
            times.pop_front();
        }
    }
}

/// The address a client is throttled by: IPv4 as is, IPv6 by its /64.
fn network_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(limit: u32, window_ms: u64, loopback: bool) -> LoginThrottle {
        LoginThrottle::new(ThrottleConfig {
            limit,
            window: Duration::from_millis(window_ms),
            loopback,
        })
    }

    #[test]
    fn refuses_after_the_limit_until_the_window_passes() {
        let t = throttle(3, 200, false);
        let a = "10.0.0.1:5000";
        for _ in 0..3 {
            assert!(t.check(a).is_ok());
            t.failed(a);
        }
        let wait = t.check(a).unwrap_err();
        assert!(wait <= Duration::from_millis(200));
        // Another address and another port of the same address.
        assert!(t.check("10.0.0.2:5000").is_ok());
        assert!(t.check("10.0.0.1:6000").is_err());
        std::thread::sleep(wait + Duration::from_millis(10));
        assert!(t.check(a).is_ok());
    }

    #[test]
    fn loopback_is_exempt_unless_asked_and_zero_disables() {
        let t = throttle(1, 10_000, false);
        t.failed("127.0.0.1:1");
        assert!(t.check("127.0.0.1:1").is_ok());
        let t = throttle(1, 10_000, true);
        t.failed("127.0.0.1:1");
        assert!(t.check("127.0.0.1:1").is_err());
        let t = throttle(0, 10_000, true);
        t.failed("10.1.1.1:1");
        assert!(t.check("10.1.1.1:1").is_ok());
    }

    #[test]
    fn an_ipv6_client_counts_by_its_64() {
        let t = throttle(2, 10_000, false);
        t.failed("[2001:db8:1:2::1]:5000");
        t.failed("[2001:db8:1:2:ffff:0:0:9]:6000");
        assert!(t.check("[2001:db8:1:2:abcd::7]:7000").is_err(), "same /64");
        assert!(t.check("[2001:db8:1:3::1]:5000").is_ok(), "the next /64");
        // An IPv4 client seen through an IPv4-mapped address is that IPv4 address.
        let t = throttle(1, 10_000, false);
        t.failed("[::ffff:10.0.0.1]:1");
        assert!(t.check("10.0.0.1:2").is_err());
        assert!(t.check("10.0.0.2:2").is_ok());
    }
}
