//! Hook sites and taps.
//!
//! A *site* is a named point in a forward pass. Models call [`Hooks::site`] at every site on
//! every pass; a [`Tap`] that wants the site sees the tensor and may return a replacement
//! (ablation, patching, steering). A site no tap wants returns its input untouched: no copy,
//! no allocation. Where a firing happened (`step`, `t`) is set by the loop that owns it (the
//! denoising loop, the thought loop), because only the caller knows it.

use candle_core::{Result, Tensor};

/// Where a site fired: the site's name and the generation step it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Firing<'a> {
    pub site: &'a str,
    /// Denoising step index, or the forward-pass index of a continuous thought; 0 for a
    /// single pass.
    pub step: u16,
    /// Diffusion timestep; `None` outside diffusion.
    pub t: Option<i32>,
    /// Absolute sequence position of the first position of a token site in this pass (a
    /// language model's pass over cached context starts after it); 0 elsewhere.
    pub first_position: i32,
}

/// Something that observes or replaces tensors at sites.
pub trait Tap {
    /// Whether this tap wants `site`. Asked at every firing, so keep it cheap.
    fn wants(&self, site: &str) -> bool;

    /// Sees the tensor at a wanted site. `Ok(None)` observes only; `Ok(Some(t))` replaces
    /// the tensor with `t`, which must have the same shape.
    fn tap(&mut self, x: &Tensor, at: &Firing) -> Result<Option<Tensor>>;
}

/// The taps attached to one forward pass or generation, plus the current step.
#[derive(Default)]
pub struct Hooks<'a> {
    taps: Vec<&'a mut dyn Tap>,
    step: u16,
    t: Option<i32>,
    first_position: i32,
}

impl<'a> Hooks<'a> {
    /// No taps: every site is free.
    pub fn none() -> Self {
        Self::default()
    }

    pub fn with(mut self, tap: &'a mut dyn Tap) -> Self {
        self.taps.push(tap);
        self
    }

    pub fn add(&mut self, tap: &'a mut dyn Tap) {
        self.taps.push(tap);
    }

    /// Sets where the following firings happen.
    pub fn set_step(&mut self, step: u16, t: Option<i32>) {
        self.step = step;
        self.t = t;
    }

    /// Sets the absolute position of the first token of the following pass.
    pub fn set_first_position(&mut self, position: usize) {
        self.first_position = position as i32;
    }

    pub fn step(&self) -> u16 {
        self.step
    }

    /// Whether any tap wants `site`: lets a model skip computing a tensor that exists only
    /// to be observed (Stable Diffusion's cross-attention maps).
    pub fn wants(&self, site: &str) -> bool {
        self.taps.iter().any(|t| t.wants(site))
    }

    /// Passes `x` through every tap that wants `site`, in the order they were added.
    pub fn site(&mut self, site: &str, x: Tensor) -> Result<Tensor> {
        let at = Firing {
            site,
            step: self.step,
            t: self.t,
            first_position: self.first_position,
        };
        let mut x = x;
        for tap in self.taps.iter_mut() {
            if !tap.wants(site) {
                continue;
            }
            if let Some(replacement) = tap.tap(&x, &at)? {
                if replacement.shape() != x.shape() {
                    candle_core::bail!(
                        "tap replaced site `{site}` with shape {:?}, but the site has shape {:?}",
                        replacement.dims(),
                        x.dims()
                    );
                }
                x = replacement;
            }
        }
        Ok(x)
    }
}

/// One site a model exposes, with its shape per sample (no batch dimension) and the names
/// of those dimensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteInfo {
    pub name: String,
    pub dims: Vec<(&'static str, usize)>,
    /// Whether the site fires once per denoising step / thought (true) or once per
    /// generation (false).
    pub per_step: bool,
}

impl SiteInfo {
    pub fn new(name: impl Into<String>, dims: &[(&'static str, usize)], per_step: bool) -> Self {
        Self {
            name: name.into(),
            dims: dims.to_vec(),
            per_step,
        }
    }

    /// Number of values per sample.
    pub fn numel(&self) -> usize {
        self.dims.iter().map(|(_, n)| n).product()
    }

    /// `[channel=4, height=8, width=8]`.
    pub fn shape_string(&self) -> String {
        let parts: Vec<String> = self.dims.iter().map(|(n, d)| format!("{n}={d}")).collect();
        format!("[{}]", parts.join(", "))
    }
}

/// A site pattern from `--sites`: an exact name or a glob with `*` (any run of characters)
/// and `?` (one character).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SitePattern(String);

impl SitePattern {
    pub fn new(pattern: impl Into<String>) -> Self {
        Self(pattern.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, site: &str) -> bool {
        glob_match(self.0.as_bytes(), site.as_bytes())
    }
}

fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    // Iterative matcher with single-star backtracking: linear in practice for site names.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Resolves `--sites` patterns against the sites a model has. Every pattern must match at
/// least one site, otherwise the error lists the valid names. Order follows the model.
pub fn select_sites<'s>(
    patterns: &[SitePattern],
    available: &'s [SiteInfo],
) -> std::result::Result<Vec<&'s SiteInfo>, crate::Error> {
    for pattern in patterns {
        if !available.iter().any(|s| pattern.matches(&s.name)) {
            return Err(crate::Error::UnknownSite {
                name: pattern.as_str().to_string(),
                valid: available.iter().map(|s| s.name.clone()).collect(),
            });
        }
    }
    Ok(available
        .iter()
        .filter(|s| patterns.iter().any(|p| p.matches(&s.name)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_like_a_shell() {
        let p = SitePattern::new("unet.*");
        assert!(p.matches("unet.mid_block"));
        assert!(p.matches("unet.down_blocks.0"));
        assert!(!p.matches("vae.encoder.mean"));
        assert!(SitePattern::new("blocks.?.hook_resid_post").matches("blocks.1.hook_resid_post"));
        assert!(!SitePattern::new("blocks.?.hook_resid_post").matches("blocks.10.hook_resid_post"));
        assert!(SitePattern::new("*").matches("latent"));
        assert!(SitePattern::new("latent").matches("latent"));
        assert!(!SitePattern::new("latent").matches("latents"));
        assert!(SitePattern::new("*.mean").matches("vae.encoder.mean"));
    }

    #[test]
    fn unknown_site_lists_the_valid_ones() {
        let sites = vec![
            SiteInfo::new("latent", &[("channel", 4)], true),
            SiteInfo::new("unet.out", &[("channel", 4)], true),
        ];
        let err = select_sites(&[SitePattern::new("unet.mid")], &sites).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("unet.mid"), "{msg}");
        assert!(msg.contains("latent") && msg.contains("unet.out"), "{msg}");
    }
}
