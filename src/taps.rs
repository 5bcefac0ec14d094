//! The taps users need: record latents (`Recorder`), zero a site (`Ablate`), add a direction
//! (`Steer`), or put in a tensor from another run (`Patch`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use candle_core::{DType, Result, Tensor};

use crate::sites::{Firing, SiteInfo, Tap};
use crate::store::Latents;

/// How a site's tensor becomes rows.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Pool {
    /// Image sites: one row per sample with the whole tensor (CHW order). Token sites: one
    /// row per position.
    None,
    /// Image sites: the channel vector averaged over space. Token sites: the vector averaged
    /// over positions.
    Mean,
}

/// How a site's per-sample tensor is laid out, read from its dimension names: a leading
/// `position` axis makes it a token site, anything else is observed whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteLayout {
    pub name: String,
    dims: Vec<usize>,
    tokens: bool,
    pub per_step: bool,
}

impl SiteLayout {
    pub fn new(info: &SiteInfo) -> Self {
        Self {
            name: info.name.clone(),
            dims: info.dims.iter().map(|(_, n)| *n).collect(),
            tokens: info.dims.first().is_some_and(|(n, _)| *n == "position"),
            per_step: info.per_step,
        }
    }

    /// Length of `x` in this site's rows.
    pub fn width(&self, pool: Pool) -> usize {
        match (self.tokens, pool) {
            (true, _) => self.dims[1..].iter().product(),
            (false, Pool::None) => self.dims.iter().product(),
            (false, Pool::Mean) => self.dims.first().copied().unwrap_or(1),
        }
    }
}

/// Copies the tensors of chosen sites into rows, tagged with sample, step, t and position.
///
/// The caller says which samples the current batch holds ([`Recorder::begin_batch`]); a
/// site whose tensor has more rows than that (the unconditional half of a guided UNet
/// batch) is recorded for its first rows only.
pub struct Recorder {
    layouts: Vec<SiteLayout>,
    steps: Option<Vec<u16>>,
    pool: Pool,
    batch: Vec<u32>,
    rows: BTreeMap<String, Latents>,
    busy: Duration,
}

impl Recorder {
    /// Records `sites`; per-step sites only at `steps` (all steps when `None`).
    pub fn new(sites: &[&SiteInfo], steps: Option<Vec<u16>>, pool: Pool) -> Self {
        let layouts: Vec<SiteLayout> = sites.iter().map(|s| SiteLayout::new(s)).collect();
        let rows = layouts
            .iter()
            .map(|l| (l.name.clone(), Latents::new(l.width(pool))))
            .collect();
        Self {
            layouts,
            steps,
            pool,
            batch: Vec::new(),
            rows,
            busy: Duration::ZERO,
        }
    }

    /// The sample ids of the rows of the next forward pass(es).
    pub fn begin_batch(&mut self, samples: &[u32]) {
        self.batch = samples.to_vec();
    }

    /// Takes the rows recorded so far, per site, sorted by (sample, step, position).
    ///
    /// The buffers that replace them have room for as many rows as were taken: recording
    /// goes in equal chunks, and growing a buffer by doubling copies it again and again.
    pub fn take(&mut self) -> BTreeMap<String, Latents> {
        let fresh = self
            .rows
            .iter()
            .map(|(name, r)| (name.clone(), Latents::with_capacity(r.width, r.len())))
            .collect();
        let mut rows = std::mem::replace(&mut self.rows, fresh);
        rows.values_mut().for_each(Latents::sort);
        rows
    }

    /// Time spent copying tensors into rows since the recorder was made: the whole cost
    /// of recording, before anything is written.
    pub fn busy(&self) -> Duration {
        self.busy
    }

    /// Bytes of latent values buffered.
    pub fn buffered_bytes(&self) -> usize {
        self.rows.values().map(Latents::value_bytes).sum()
    }

    fn copy_rows(&mut self, x: &Tensor, at: &Firing) -> Result<()> {
        let Some(layout) = self.layouts.iter().find(|l| l.name == at.site) else {
            return Ok(());
        };
        if !self.keeps(layout, at.step) {
            return Ok(());
        }
        let b = self.batch.len();
        if x.dim(0)? < b {
            candle_core::bail!(
                "site `{}` fired with {} rows for a batch of {b} samples",
                at.site,
                x.dim(0)?
            );
        }
        let x = x.narrow(0, 0, b)?.to_dtype(DType::F32)?;
        let tokens = layout.tokens;
        let pooled = match (tokens, self.pool) {
            (true, Pool::Mean) => x.flatten_from(2)?.mean(1)?,
            (false, Pool::Mean) if x.rank() > 2 => x.flatten_from(2)?.mean(2)?,
            _ => x,
        };
        let values: Vec<f32> = pooled.flatten_all()?.to_vec1()?;
        let per_sample = values.len() / b;
        if let Some(i) = crate::finite::first_non_finite(&values) {
            // Rows of NaN look like data to every analysis; stop before they reach a file.
            candle_core::bail!(
                "non-finite activation ({}) at site `{}`, step {}, sample {}: the model's \
                 weights or inputs are broken; the chunk holding it was not written",
                values[i],
                at.site,
                at.step,
                self.batch[i / per_sample.max(1)]
            );
        }
        let rows = self
            .rows
            .get_mut(at.site)
            .expect("wants() checked the site");
        let width = rows.width;
        for (i, &sample) in self.batch.iter().enumerate() {
            let chunk = &values[i * per_sample..(i + 1) * per_sample];
            if tokens && self.pool == Pool::None {
                for (p, row) in chunk.chunks_exact(width).enumerate() {
                    rows.push(
                        sample,
                        at.step,
                        at.t,
                        Some(at.first_position + p as i32),
                        row,
                    );
                }
            } else {
                rows.push(sample, at.step, at.t, None, chunk);
            }
        }
        Ok(())
    }

    fn keeps(&self, layout: &SiteLayout, step: u16) -> bool {
        !layout.per_step || self.steps.as_ref().is_none_or(|s| s.contains(&step))
    }
}

impl Tap for Recorder {
    fn wants(&self, site: &str) -> bool {
        self.rows.contains_key(site)
    }

    fn tap(&mut self, x: &Tensor, at: &Firing) -> Result<Option<Tensor>> {
        let started = Instant::now();
        let copied = self.copy_rows(x, at);
        self.busy += started.elapsed();
        copied.map(|()| None)
    }
}

/// Replaces a site with zeros (zero ablation), at every step or only at `step`.
pub struct Ablate {
    pub site: String,
    pub step: Option<u16>,
}

impl Tap for Ablate {
    fn wants(&self, site: &str) -> bool {
        site == self.site
    }

    fn tap(&mut self, x: &Tensor, at: &Firing) -> Result<Option<Tensor>> {
        if self.step.is_some_and(|s| s != at.step) {
            return Ok(None);
        }
        Ok(Some(x.zeros_like()?))
    }
}

/// Adds `alpha * direction` to every sample's tensor at a site (activation steering).
/// `direction` has the site's per-sample shape.
pub struct Steer {
    pub site: String,
    pub direction: Tensor,
    pub alpha: f64,
    pub step: Option<u16>,
}

impl Tap for Steer {
    fn wants(&self, site: &str) -> bool {
        site == self.site
    }

    fn tap(&mut self, x: &Tensor, at: &Firing) -> Result<Option<Tensor>> {
        if self.step.is_some_and(|s| s != at.step) {
            return Ok(None);
        }
        let delta = (self.direction.to_dtype(x.dtype())? * self.alpha)?;
        Ok(Some(x.broadcast_add(&delta)?))
    }
}

/// Puts recorded tensors into a site (activation patching): `values[step]` replaces the
/// site's tensor at that step; other steps pass through.
pub struct Patch {
    pub site: String,
    pub values: BTreeMap<u16, Tensor>,
}

impl Tap for Patch {
    fn wants(&self, site: &str) -> bool {
        site == self.site
    }

    fn tap(&mut self, x: &Tensor, at: &Firing) -> Result<Option<Tensor>> {
        match self.values.get(&at.step) {
            Some(v) => Ok(Some(
                v.to_dtype(x.dtype())?
                    .broadcast_as(x.shape())?
                    .contiguous()?,
            )),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sites::Hooks;
    use candle_core::Device;

    fn image_site() -> SiteInfo {
        SiteInfo::new("h", &[("channel", 2), ("height", 2), ("width", 2)], true)
    }

    #[test]
    fn recorder_keeps_every_firing_and_only_the_batch_rows() {
        let info = image_site();
        let mut rec = Recorder::new(&[&info], None, Pool::None);
        rec.begin_batch(&[10, 11]);
        // 4 rows: the guided [cond; uncond] batch for 2 samples.
        let x = Tensor::arange(0f32, 32., &Device::Cpu)
            .unwrap()
            .reshape((4, 2, 2, 2))
            .unwrap();
        {
            let mut hooks = Hooks::none().with(&mut rec);
            for step in 0..3u16 {
                hooks.set_step(step, Some(100 - step as i32));
                let y = hooks.site("h", x.clone()).unwrap();
                let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert_eq!(
                    flat(&y),
                    flat(&x),
                    "an observing tap must not change the tensor"
                );
            }
        }
        let rows = rec.take();
        let h = &rows["h"];
        assert_eq!(h.len(), 6);
        assert_eq!(h.width, 8);
        assert_eq!(h.sample, vec![10, 10, 10, 11, 11, 11]);
        assert_eq!(h.step, vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(h.t[2], Some(98));
        assert_eq!(h.row(3), &[8., 9., 10., 11., 12., 13., 14., 15.]);
        assert!(rec.busy() > std::time::Duration::ZERO);
        // The next chunk's buffers already have room for a chunk like the last one.
        let next = rec.take();
        assert!(next["h"].is_empty());
        assert!(next["h"].x.capacity() >= h.x.len());
        assert!(next["h"].sample.capacity() >= h.len());
    }

    #[test]
    fn a_non_finite_activation_stops_recording_naming_site_step_and_sample() {
        let info = image_site();
        let mut rec = Recorder::new(&[&info], None, Pool::None);
        rec.begin_batch(&[4, 5]);
        let mut v = vec![0f32; 16];
        v[11] = f32::NAN; // second sample (elements 8..16)
        let x = Tensor::from_vec(v, (2, 2, 2, 2), &Device::Cpu).unwrap();
        let mut hooks = Hooks::none().with(&mut rec);
        hooks.set_step(3, Some(40));
        let err = hooks.site("h", x).unwrap_err().to_string();
        assert!(
            err.contains("NaN") && err.contains("site `h`, step 3, sample 5"),
            "{err}"
        );
        drop(hooks);
        assert!(
            rec.take()["h"].is_empty(),
            "no row of the bad firing is kept"
        );
    }

    #[test]
    fn mean_pool_averages_space_and_step_filter_applies() {
        let info = image_site();
        let mut rec = Recorder::new(&[&info], Some(vec![1]), Pool::Mean);
        rec.begin_batch(&[0]);
        let x = Tensor::arange(0f32, 8., &Device::Cpu)
            .unwrap()
            .reshape((1, 2, 2, 2))
            .unwrap();
        {
            let mut hooks = Hooks::none().with(&mut rec);
            for step in 0..3u16 {
                hooks.set_step(step, None);
                hooks.site("h", x.clone()).unwrap();
            }
        }
        let rows = rec.take();
        assert_eq!(rows["h"].step, vec![1]);
        assert_eq!(rows["h"].row(0), &[1.5, 5.5]);
    }

    #[test]
    fn token_sites_give_one_row_per_position() {
        let info = SiteInfo::new(
            "blocks.0.hook_resid_post",
            &[("position", 3), ("d_model", 2)],
            true,
        );
        let mut rec = Recorder::new(&[&info], None, Pool::None);
        rec.begin_batch(&[5]);
        let x = Tensor::arange(0f32, 6., &Device::Cpu)
            .unwrap()
            .reshape((1, 3, 2))
            .unwrap();
        Hooks::none().with(&mut rec).site(&info.name, x).unwrap();
        let rows = rec.take();
        let r = &rows[&info.name];
        assert_eq!(r.position, vec![Some(0), Some(1), Some(2)]);
        assert_eq!(r.row(2), &[4., 5.]);
    }

    #[test]
    fn steer_adds_the_scaled_direction_and_ablate_zeroes() {
        let x = Tensor::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu).unwrap();
        let mut steer = Steer {
            site: "s".into(),
            direction: Tensor::new(&[1f32, -1.], &Device::Cpu).unwrap(),
            alpha: 0.5,
            step: None,
        };
        let y = Hooks::none().with(&mut steer).site("s", x.clone()).unwrap();
        assert_eq!(
            y.to_vec2::<f32>().unwrap(),
            vec![vec![1.5, 1.5], vec![3.5, 3.5]]
        );
        let mut ablate = Ablate {
            site: "s".into(),
            step: Some(2),
        };
        let mut hooks = Hooks::none().with(&mut ablate);
        assert_eq!(
            hooks
                .site("s", x.clone())
                .unwrap()
                .to_vec2::<f32>()
                .unwrap()[0],
            vec![1., 2.]
        );
        hooks.set_step(2, None);
        assert_eq!(
            hooks.site("s", x).unwrap().to_vec2::<f32>().unwrap()[0],
            vec![0., 0.]
        );
    }
}
