//! What a service reports as its load (see `weft_mesh::LoadGauge`): the
//! larger of its process's CPU use over its cores and its database pool's
//! use, sampled every second. Either alone can be the bottleneck, and
//! either near 1 means another call will queue.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use weft_mesh::LoadGauge;

use crate::Db;

/// How often the load is sampled.
const EVERY: Duration = Duration::from_secs(1);
/// Clock ticks per second in /proc (USER_HZ, 100 on every Linux that
/// matters; the kernel scales to it whatever its own tick).
const TICKS_PER_SECOND: f64 = 100.0;

/// The process's CPU time so far, in seconds, from /proc/self/stat (`None`
/// where there is no /proc), in steps of a hundredth of a second.
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name is in parentheses and may hold spaces: count from
    // after it. utime and stime are the 14th and 15th fields.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

/// The share of the pool's connections in use.
fn pool_use(db: &Db) -> f64 {
    let status = db.status();
    if status.max_size == 0 {
        return 0.0;
    }
    let idle = status.available;
    let in_use = status.size.saturating_sub(idle) + status.waiting;
    (in_use as f64 / status.max_size as f64).min(1.0)
}

/// Samples into `gauge` until aborted.
pub async fn sample(gauge: Arc<LoadGauge>, db: Option<Db>) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let mut last = (Instant::now(), cpu_seconds());
    loop {
        tokio::time::sleep(EVERY).await;
        let now = (Instant::now(), cpu_seconds());
        let cpu = match (last.1, now.1) {
            (Some(before), Some(after)) => {
                let wall = now.0.duration_since(last.0).as_secs_f64().max(1e-3);
                ((after - before) / wall / cores).clamp(0.0, 1.0)
            }
            _ => 0.0,
        };
        let pool = db.as_ref().map_or(0.0, pool_use);
        gauge.set(cpu.max(pool));
        last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_and_grows() {
        let before = cpu_seconds().unwrap();
        let mut x = 0u64;
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let after = cpu_seconds().unwrap();
        assert!(after >= before, "{before} -> {after}");
    }
}
