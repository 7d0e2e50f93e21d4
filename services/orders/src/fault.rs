//! Crash points for tests: in builds with the `fault-injection` feature,
//! `WEFT_FAULT_CRASH_AFTER=<point>` aborts the process at that point, as a
//! crash or `kill -9` would, so tests can show every saga resumes. Without
//! the feature this compiles to nothing.

/// Aborts the process when crashing after `point` was asked for.
#[cfg(feature = "fault-injection")]
pub fn crash_after(point: &str) {
    if std::env::var("WEFT_FAULT_CRASH_AFTER").is_ok_and(|p| p == point) {
        eprintln!("fault injection: crashing after {point}");
        std::process::abort();
    }
}

/// Does nothing: fault injection is compiled out.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn crash_after(_point: &str) {}
