//! Pieces every command shares: progress bars, Ctrl-C, the compute device, site lists.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use anyhow::Context;
use candle_core::Device;
use indicatif::{ProgressBar, ProgressStyle};

use crate::store::Run;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static HANDLER: OnceLock<bool> = OnceLock::new();

/// A flag that turns true on Ctrl-C. Long jobs check it between units of work, so an
/// interrupted run keeps its finished parts and can be resumed.
pub fn interrupt_flag() -> &'static AtomicBool {
    HANDLER
        .get_or_init(|| ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst)).is_ok());
    &INTERRUPTED
}

/// A progress bar on stderr (hidden when stderr is not a terminal, e.g. in CI logs).
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template(
        "{msg:>12} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(what.to_string());
    bar
}

/// The terminal's progress bar is the library's [`Progress`](crate::progress::Progress).
impl crate::progress::Progress for ProgressBar {
    fn set_length(&self, len: u64) {
        ProgressBar::set_length(self, len);
    }
    fn inc_length(&self, delta: u64) {
        ProgressBar::inc_length(self, delta);
    }
    fn inc(&self, delta: u64) {
        ProgressBar::inc(self, delta);
    }
    fn set_position(&self, pos: u64) {
        ProgressBar::set_position(self, pos);
    }
    fn set_message(&self, what: &str) {
        ProgressBar::set_message(self, what.to_string());
    }
}

/// CPU, or the first CUDA device when built with `--features cuda` and one is present.
pub fn device() -> anyhow::Result<Device> {
    Device::cuda_if_available(0).context("could not open the compute device")
}

/// Splits `--sites a,b --sites c` into patterns.
pub fn site_patterns(values: &[String]) -> Vec<crate::sites::SitePattern> {
    values
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(crate::sites::SitePattern::new)
        .collect()
}

/// The recorded sites of `run` that match `--sites` patterns (all when none are given);
/// a pattern that matches nothing lists the sites the run has.
pub fn recorded_sites(run: &Run, patterns: &[String]) -> anyhow::Result<Vec<String>> {
    let available = run.sites()?;
    anyhow::ensure!(
        !available.is_empty(),
        "{} has no recorded sites (no latents/site=*/ folders)",
        run.root().display()
    );
    let patterns = site_patterns(patterns);
    for p in &patterns {
        if !available.iter().any(|s| p.matches(s)) {
            return Err(crate::Error::UnknownSite {
                name: p.as_str().to_string(),
                valid: available.clone(),
            }
            .into());
        }
    }
    Ok(available
        .into_iter()
        .filter(|s| patterns.is_empty() || patterns.iter().any(|p| p.matches(s)))
        .collect())
}

/// Training allocates and frees the same large tensors every step. glibc hands blocks above
/// its mmap threshold back to the kernel at once, so every step page-faults them in again:
/// 1.04 M minor faults in a 480-question epoch of `train reasoner`, 79 k with freed memory
/// kept (9.4 s instead of 11.0 s, the same losses). Only the training commands do this:
/// elsewhere the memory figures of the README hold as measured.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before any training
    // thread starts and takes plain integers.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}
