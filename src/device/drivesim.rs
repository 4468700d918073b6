//! A model of a streaming tape drive's speed, for the virtual tape and for
//! measuring other tools' output the same way (`tapir vtape sink`).
//!
//! The drive moves tape at a speed between its floor and its maximum,
//! matching the host's data rate (speed matching). It has a buffer: when the
//! host cannot keep it from running empty while the tape moves, the tape
//! stops and must back up before it starts again (a backhitch). A
//! synchronous flush empties the buffer and stops the tape too. When the
//! buffer is full the host waits, which is how the model limits throughput.

use std::time::{Duration, Instant};

/// Speed and buffer of the simulated drive. Rates are native (on tape);
/// `compression` is the drive's own compression ratio, so the host feeds
/// `rate * compression` bytes per second at full speed.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DriveSimConfig {
    pub rate: f64,
    pub floor: f64,
    pub buffer: u64,
    pub compression: f64,
    /// Time one backhitch costs (repositioning), accounted, not slept.
    #[serde(default = "default_backhitch_seconds")]
    pub backhitch_seconds: f64,
}

fn default_backhitch_seconds() -> f64 {
    2.0
}

impl DriveSimConfig {
    /// An LTO-9 drive: 400 MB/s native, floor about 120 MB/s, 1 GiB buffer.
    pub fn lto9(compression: f64) -> Self {
        DriveSimConfig {
            rate: 400e6,
            floor: 120e6,
            buffer: 1 << 30,
            compression,
            backhitch_seconds: default_backhitch_seconds(),
        }
    }
}

/// What the simulated drive went through.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct StreamingStats {
    /// Times the tape stopped for want of data and had to back up.
    pub backhitches: u64,
    /// Of those, how many followed a synchronous flush.
    pub flush_backhitches: u64,
    /// Time repositioning would have cost.
    pub time_lost_seconds: f64,
    /// Time the host waited because the drive's buffer was full.
    pub host_wait_seconds: f64,
    pub bytes: u64,
}

/// The running model. Call [`DriveSim::write`] for each block and
/// [`DriveSim::flush`] for each synchronous flush.
#[derive(Debug, Clone)]
pub struct DriveSim {
    cfg: DriveSimConfig,
    /// Host bytes in the drive's buffer.
    level: f64,
    last: Option<Instant>,
    moving: bool,
    stopped_by_flush: bool,
    /// Current tape speed in host bytes per second.
    speed: f64,
    /// Smoothed host input rate, bytes per second, once observed.
    host_rate: Option<f64>,
    stats: StreamingStats,
}

impl DriveSim {
    pub fn new(cfg: DriveSimConfig) -> Self {
        DriveSim {
            cfg,
            level: 0.0,
            last: None,
            moving: false,
            stopped_by_flush: false,
            speed: cfg.rate * cfg.compression,
            host_rate: None,
            stats: StreamingStats::default(),
        }
    }

    pub fn stats(&self) -> StreamingStats {
        self.stats
    }

    fn max_speed(&self) -> f64 {
        self.cfg.rate * self.cfg.compression
    }

    fn floor_speed(&self) -> f64 {
        self.cfg.floor * self.cfg.compression
    }

    /// The tape starts once the buffer holds this much (or on a flush).
    fn start_level(&self) -> f64 {
        (self.cfg.buffer as f64 / 4.0).min(64.0 * 1024.0 * 1024.0)
    }

    /// Advance the model to `now`: the moving tape drains the buffer.
    fn advance(&mut self, now: Instant) {
        let Some(last) = self.last else {
            self.last = Some(now);
            return;
        };
        let dt = now.saturating_duration_since(last).as_secs_f64();
        self.last = Some(now);
        if !self.moving || dt <= 0.0 {
            return;
        }
        let drained = dt * self.speed;
        if drained >= self.level {
            // Ran dry while moving: the tape stops and must back up.
            self.level = 0.0;
            self.moving = false;
            self.stats.backhitches += 1;
            self.stats.time_lost_seconds += self.cfg.backhitch_seconds;
        } else {
            self.level -= drained;
        }
    }

    /// The host hands the drive `len` bytes at `now`. Returns how long the
    /// host must wait because the buffer is full (the caller sleeps).
    pub fn write_at(&mut self, len: usize, now: Instant) -> Duration {
        self.advance(now);
        self.stats.bytes += len as u64;
        self.level += len as f64;
        if !self.moving && self.level >= self.start_level() {
            if self.stopped_by_flush {
                self.stats.backhitches += 1;
                self.stats.flush_backhitches += 1;
                self.stats.time_lost_seconds += self.cfg.backhitch_seconds;
                self.stopped_by_flush = false;
            }
            self.moving = true;
        }
        let buffer = self.cfg.buffer as f64;
        if self.level > buffer {
            let wait = (self.level - buffer) / self.speed;
            self.level = buffer;
            self.last = Some(now + Duration::from_secs_f64(wait));
            self.stats.host_wait_seconds += wait;
            return Duration::from_secs_f64(wait);
        }
        Duration::ZERO
    }

    /// Update the smoothed host rate from a write of `len` bytes taking `dt`.
    pub fn observe_host(&mut self, len: usize, dt: Duration) {
        let dt = dt.as_secs_f64().max(1e-6);
        let inst = len as f64 / dt;
        // History of about what the drive needs to start moving.
        let alpha = (len as f64 / self.start_level()).clamp(0.001, 1.0);
        let rate = match self.host_rate {
            Some(r) => r * (1.0 - alpha) + inst * alpha,
            None => inst,
        };
        self.host_rate = Some(rate);
        self.speed = rate.clamp(self.floor_speed(), self.max_speed());
    }

    /// A synchronous flush at `now`: the host waits until the buffer is on
    /// tape, and the tape stops. Returns the wait.
    pub fn flush_at(&mut self, now: Instant) -> Duration {
        self.advance(now);
        let wait = if self.level > 0.0 {
            self.level / self.speed
        } else {
            0.0
        };
        self.level = 0.0;
        if self.moving || wait > 0.0 {
            self.stopped_by_flush = true;
        }
        self.moving = false;
        self.last = Some(now + Duration::from_secs_f64(wait));
        self.stats.host_wait_seconds += wait;
        Duration::from_secs_f64(wait)
    }

    /// Convenience for live use: write now and sleep as the drive would make the host wait.
    pub fn write(&mut self, len: usize) {
        let now = Instant::now();
        let since = self.last.map(|l| now.saturating_duration_since(l));
        let wait = self.write_at(len, now);
        if let Some(dt) = since {
            self.observe_host(len, dt);
        }
        if !wait.is_zero() {
            // The drive is slower than the host: this is the device's speed, not synchronisation.
            std::thread::sleep(wait);
        }
    }

    /// Convenience for live use: flush now and sleep while the buffer drains.
    pub fn flush(&mut self) {
        let wait = self.flush_at(Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> DriveSimConfig {
        DriveSimConfig {
            rate: 100e6,
            floor: 40e6,
            buffer: 100_000_000,
            compression: 1.0,
            backhitch_seconds: 2.0,
        }
    }

    const MB: usize = 1_000_000;

    /// Feed `total` bytes in 1 MB writes at `rate` bytes/s of host time.
    fn feed(sim: &mut DriveSim, t0: Instant, start: f64, rate: f64, total: usize) -> f64 {
        let mut t = start;
        for _ in 0..total / MB {
            let now = t0 + Duration::from_secs_f64(t);
            let wait = sim.write_at(MB, now);
            sim.observe_host(MB, Duration::from_secs_f64(MB as f64 / rate));
            t += MB as f64 / rate + wait.as_secs_f64();
        }
        t
    }

    #[test]
    fn a_host_faster_than_the_drive_never_starves_it_and_waits_instead() {
        let mut sim = DriveSim::new(cfg());
        let t0 = Instant::now();
        let end = feed(&mut sim, t0, 0.0, 1e9, 2000 * MB);
        assert_eq!(sim.stats().backhitches, 0);
        // 2 GB at 100 MB/s takes about 19 s beyond the buffer.
        assert!(end > 18.0 && end < 21.0, "host finished at {end}");
    }

    #[test]
    fn speed_matching_absorbs_a_host_between_floor_and_maximum() {
        let mut sim = DriveSim::new(cfg());
        let t0 = Instant::now();
        feed(&mut sim, t0, 0.0, 60e6, 1000 * MB);
        assert_eq!(sim.stats().backhitches, 0);
    }

    #[test]
    fn a_host_below_the_floor_makes_the_tape_shoe_shine() {
        let mut sim = DriveSim::new(cfg());
        let t0 = Instant::now();
        feed(&mut sim, t0, 0.0, 20e6, 1000 * MB);
        let s = sim.stats();
        assert!(s.backhitches >= 3, "{s:?}");
        assert!(s.time_lost_seconds >= 6.0);
    }

    #[test]
    fn each_flush_followed_by_more_data_costs_a_backhitch() {
        let mut sim = DriveSim::new(cfg());
        let t0 = Instant::now();
        let mut t = feed(&mut sim, t0, 0.0, 1e9, 200 * MB);
        for _ in 0..3 {
            t += sim.flush_at(t0 + Duration::from_secs_f64(t)).as_secs_f64();
            t = feed(&mut sim, t0, t, 1e9, 200 * MB);
        }
        let s = sim.stats();
        assert_eq!(s.flush_backhitches, 3, "{s:?}");
        assert_eq!(s.backhitches, 3);
    }
}
