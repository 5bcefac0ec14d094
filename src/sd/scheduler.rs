//! Samplers read from a pipeline's `scheduler_config.json`: DDIM, Euler, Euler ancestral and
//! DPM-Solver++ 2M, with diffusers' `timestep_spacing` ("leading", "trailing", "linspace"),
//! epsilon, v and sample prediction. Timesteps, sigmas and every update follow diffusers'
//! `DDIMScheduler`, `EulerDiscreteScheduler`, `EulerAncestralDiscreteScheduler` and
//! `DPMSolverMultistepScheduler` (numpy's round-half-to-even included), and are tested
//! against them.
//!
//! As in diffusers, any scheduler can be built from any scheduler's config: the fields the
//! chosen scheduler reads are taken (and checked), the others are ignored.

use std::path::Path;

use candle_core::{Result as CResult, Tensor};
use serde::{Deserialize, Serialize};

use super::config::Fields;
use crate::{Error, Result};

/// Which sampler runs the denoising loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum SchedulerKind {
    /// DDIM (diffusers' DDIMScheduler; eta 0 unless --eta).
    Ddim,
    /// Euler (EulerDiscreteScheduler).
    Euler,
    /// Euler ancestral (EulerAncestralDiscreteScheduler): fresh noise every step.
    EulerAncestral,
    /// DPM-Solver++ 2M (DPMSolverMultistepScheduler, order 2, midpoint).
    #[value(name = "dpm++2m")]
    #[serde(rename = "dpm++2m")]
    DpmSolverPP2M,
}

impl SchedulerKind {
    /// The kind a diffusers class name stands for, if we implement it. PNDM (SD 1.x's
    /// default) and LMS configs are read as DDIM: they share every field DDIM needs.
    pub fn from_class_name(name: &str) -> Option<Self> {
        match name {
            "DDIMScheduler" | "PNDMScheduler" | "LMSDiscreteScheduler" => Some(Self::Ddim),
            "EulerDiscreteScheduler" => Some(Self::Euler),
            "EulerAncestralDiscreteScheduler" => Some(Self::EulerAncestral),
            "DPMSolverMultistepScheduler" => Some(Self::DpmSolverPP2M),
            _ => None,
        }
    }

    pub fn class_name(&self) -> &'static str {
        match self {
            Self::Ddim => "DDIMScheduler",
            Self::Euler => "EulerDiscreteScheduler",
            Self::EulerAncestral => "EulerAncestralDiscreteScheduler",
            Self::DpmSolverPP2M => "DPMSolverMultistepScheduler",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Spacing {
    Leading,
    Trailing,
    Linspace,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    Epsilon,
    VPrediction,
    Sample,
}

/// The fields of `scheduler_config.json` our samplers read.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SchedulerConfig {
    /// `_class_name` of the file.
    pub class_name: String,
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: String,
    pub prediction: Prediction,
    /// `None`: the chosen scheduler's own default (linspace for Euler and DPM-Solver,
    /// leading for DDIM).
    pub spacing: Option<Spacing>,
    pub steps_offset: usize,
    pub set_alpha_to_one: bool,
    /// DDIM's `clip_sample_range` when `clip_sample` is on.
    pub clip_sample: Option<f64>,
    #[serde(skip)]
    fields: Vec<(String, serde_json::Value)>,
    #[serde(skip)]
    path: std::path::PathBuf,
}

impl SchedulerConfig {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::BadFile {
            path: path.to_path_buf(),
            detail: format!("cannot read: {e}"),
        })?;
        // Python's json writes -Infinity (DPM-Solver's lambda_min_clipped), which is not JSON.
        let text = text
            .replace("-Infinity", "null")
            .replace("Infinity", "null");
        let f = Fields::parse(path, &text)?;
        Self::from_fields(&f)
    }

    pub(crate) fn from_fields(f: &Fields) -> Result<Self> {
        let prediction = match f.str_or("prediction_type", "epsilon")?.as_str() {
            "epsilon" => Prediction::Epsilon,
            "v_prediction" => Prediction::VPrediction,
            "sample" => Prediction::Sample,
            other => {
                return Err(f.bad(format!(
                "`prediction_type` = \"{other}\" is not supported (epsilon, v_prediction, sample)"
            )))
            }
        };
        let spacing = match f.get("timestep_spacing").and_then(|v| v.as_str()) {
            None => None,
            Some("leading") => Some(Spacing::Leading),
            Some("trailing") => Some(Spacing::Trailing),
            Some("linspace") => Some(Spacing::Linspace),
            Some(other) => {
                return Err(f.bad(format!(
                "`timestep_spacing` = \"{other}\" is not supported (leading, trailing, linspace)"
            )))
            }
        };
        let beta_schedule = f.str_or("beta_schedule", "linear")?;
        if !["linear", "scaled_linear", "squaredcos_cap_v2"].contains(&beta_schedule.as_str()) {
            return Err(f.bad(format!(
                "`beta_schedule` = \"{beta_schedule}\" is not supported (linear, scaled_linear, squaredcos_cap_v2)"
            )));
        }
        f.only("trained_betas", &[])?;
        f.only("rescale_betas_zero_snr", &[false.into()])?;
        let num_train_timesteps = f.usize_or("num_train_timesteps", 1000)?;
        if num_train_timesteps < 2 {
            return Err(f.bad(format!(
                "`num_train_timesteps` = {num_train_timesteps} must be at least 2"
            )));
        }
        let clip = f.bool_or("clip_sample", false)?;
        Ok(Self {
            class_name: f.str_or("_class_name", "DDIMScheduler")?,
            num_train_timesteps,
            beta_start: f.f64_or("beta_start", 0.0001)?,
            beta_end: f.f64_or("beta_end", 0.02)?,
            beta_schedule,
            prediction,
            spacing,
            steps_offset: f.usize_or("steps_offset", 0)?,
            set_alpha_to_one: f.bool_or("set_alpha_to_one", true)?,
            clip_sample: if clip {
                Some(f.f64_or("clip_sample_range", 1.0)?)
            } else {
                None
            },
            fields: [
                "thresholding",
                "use_karras_sigmas",
                "use_exponential_sigmas",
                "use_beta_sigmas",
                "timestep_type",
                "interpolation_type",
                "final_sigmas_type",
                "algorithm_type",
                "solver_order",
                "solver_type",
                "lower_order_final",
                "euler_at_final",
                "variance_type",
                "sigma_min",
                "sigma_max",
                "use_lu_lambdas",
            ]
            .iter()
            .filter_map(|k| f.get(k).map(|v| (k.to_string(), v.clone())))
            .collect(),
            path: f.path().to_path_buf(),
        })
    }

    /// The kind named by `_class_name`, when we implement it.
    pub fn default_kind(&self) -> Option<SchedulerKind> {
        SchedulerKind::from_class_name(&self.class_name)
    }

    /// Fails when the file sets a field that `kind` reads (diffusers' `from_config` passes
    /// every field the class takes, whatever class wrote the file) to a value we do not
    /// implement.
    pub fn check_for(&self, kind: SchedulerKind) -> Result<()> {
        use serde_json::json;
        let allowed: Vec<(&str, Vec<serde_json::Value>)> = match kind {
            SchedulerKind::Ddim => vec![("thresholding", vec![json!(false)])],
            SchedulerKind::Euler | SchedulerKind::EulerAncestral => vec![
                ("use_karras_sigmas", vec![json!(false)]),
                ("use_exponential_sigmas", vec![json!(false)]),
                ("use_beta_sigmas", vec![json!(false)]),
                ("timestep_type", vec![json!("discrete")]),
                ("interpolation_type", vec![json!("linear")]),
                ("final_sigmas_type", vec![json!("zero")]),
                ("sigma_min", vec![]),
                ("sigma_max", vec![]),
            ],
            SchedulerKind::DpmSolverPP2M => vec![
                ("use_karras_sigmas", vec![json!(false)]),
                ("use_exponential_sigmas", vec![json!(false)]),
                ("use_beta_sigmas", vec![json!(false)]),
                ("use_lu_lambdas", vec![json!(false)]),
                ("thresholding", vec![json!(false)]),
                ("algorithm_type", vec![json!("dpmsolver++")]),
                ("solver_order", vec![json!(2)]),
                ("solver_type", vec![json!("midpoint")]),
                ("lower_order_final", vec![json!(true)]),
                ("euler_at_final", vec![json!(false)]),
                ("final_sigmas_type", vec![json!("zero")]),
                ("variance_type", vec![]),
            ],
        };
        for (key, ok) in allowed {
            if let Some((_, v)) = self.fields.iter().find(|(k, _)| k == key) {
                if !ok.contains(v) {
                    let allowed: Vec<String> = ok.iter().map(|v| v.to_string()).collect();
                    return Err(Error::BadFile {
                        path: self.path.clone(),
                        detail: format!(
                            "`{key}` = {v} is not supported by latentlens' {} (it implements {})",
                            kind.class_name(),
                            if allowed.is_empty() {
                                "null".to_string()
                            } else {
                                allowed.join(" or ")
                            }
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// Cumulative products of `1 - beta`, in f32 arithmetic as torch computes them.
    pub fn alphas_cumprod(&self) -> Vec<f64> {
        let n = self.num_train_timesteps;
        let betas: Vec<f32> = match self.beta_schedule.as_str() {
            "scaled_linear" => linspace_f32(self.beta_start.sqrt(), self.beta_end.sqrt(), n)
                .into_iter()
                .map(|b| b * b)
                .collect(),
            "squaredcos_cap_v2" => {
                let bar = |t: f64| {
                    ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
                        .cos()
                        .powi(2)
                };
                (0..n)
                    .map(|i| {
                        let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
                        (1.0 - bar(t2) / bar(t1)).min(0.999) as f32
                    })
                    .collect()
            }
            _ => linspace_f32(self.beta_start, self.beta_end, n),
        };
        let mut acc = 1f32;
        betas
            .iter()
            .map(|b| {
                acc *= 1.0 - b;
                acc as f64
            })
            .collect()
    }
}

/// torch.linspace in f32 (computed from both ends, as torch does).
fn linspace_f32(start: f64, end: f64, n: usize) -> Vec<f32> {
    let (s, e) = (start as f32, end as f32);
    let step = (e - s) / (n - 1) as f32;
    (0..n)
        .map(|i| {
            if i < n / 2 {
                s + step * i as f32
            } else {
                e - step * (n - 1 - i) as f32
            }
        })
        .collect()
}

/// numpy.linspace in f64.
fn linspace_f64(start: f64, end: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f64;
    let mut v: Vec<f64> = (0..n).map(|i| start + i as f64 * step).collect();
    v[n - 1] = end;
    v
}

/// numpy.interp over `xp = 0, 1, ..., fp.len() - 1`.
fn interp(x: f64, fp: &[f64]) -> f64 {
    let last = fp.len() - 1;
    if x <= 0.0 {
        return fp[0];
    }
    if x >= last as f64 {
        return fp[last];
    }
    let j = x.floor() as usize;
    fp[j] + (x - j as f64) * (fp[j + 1] - fp[j])
}

/// One sampler set up for a number of steps, with its multistep state.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub kind: SchedulerKind,
    pub prediction: Prediction,
    /// What the UNet is given at each step (fractional for Euler with linspace spacing).
    pub timesteps: Vec<f64>,
    /// Euler / DPM-Solver noise levels, one more than the steps (ends in 0).
    pub sigmas: Vec<f64>,
    /// Initial noise is drawn from N(0, 1) and multiplied by this.
    pub init_noise_sigma: f64,
    alphas_cumprod: Vec<f64>,
    final_alpha_cumprod: f64,
    num_train_timesteps: usize,
    clip_sample: Option<f64>,
    /// DDIM's eta: 0 is deterministic.
    pub eta: f64,
    /// DPM-Solver: the previous step's x0 prediction and how many steps have run.
    previous_x0: Option<Tensor>,
    lower_order_nums: usize,
}

impl Schedule {
    pub fn new(cfg: &SchedulerConfig, kind: SchedulerKind, steps: usize) -> Result<Self> {
        let n_train = cfg.num_train_timesteps;
        if steps == 0 || steps > n_train {
            return Err(Error::Invalid(format!(
                "{steps} inference steps: give 1..={n_train} (the schedule's num_train_timesteps)"
            )));
        }
        cfg.check_for(kind)?;
        let ac = cfg.alphas_cumprod();
        let nf = n_train as f64;
        let n = steps;
        let round = f64::round_ties_even;
        let offset = cfg.steps_offset as f64;
        let (timesteps, sigmas, init_noise_sigma) = match kind {
            SchedulerKind::Ddim => {
                let spacing = cfg.spacing.unwrap_or(Spacing::Leading);
                let ts: Vec<f64> = match spacing {
                    Spacing::Linspace => linspace_f64(0.0, nf - 1.0, n)
                        .into_iter()
                        .rev()
                        .map(round)
                        .collect(),
                    Spacing::Leading => {
                        let ratio = (n_train / n) as f64;
                        (0..n)
                            .rev()
                            .map(|i| round(i as f64 * ratio) + offset)
                            .collect()
                    }
                    Spacing::Trailing => {
                        let ratio = nf / n as f64;
                        arange_down(nf, ratio)
                            .into_iter()
                            .map(|v| round(v) - 1.0)
                            .collect()
                    }
                };
                (ts, Vec::new(), 1.0)
            }
            SchedulerKind::Euler | SchedulerKind::EulerAncestral => {
                let spacing = cfg.spacing.unwrap_or(Spacing::Linspace);
                let ts: Vec<f64> = match spacing {
                    Spacing::Linspace => linspace_f64(0.0, nf - 1.0, n)
                        .into_iter()
                        .rev()
                        .map(|t| t as f32 as f64)
                        .collect(),
                    Spacing::Leading => {
                        let ratio = (n_train / n) as f64;
                        (0..n)
                            .rev()
                            .map(|i| round(i as f64 * ratio) + offset)
                            .collect()
                    }
                    Spacing::Trailing => {
                        let ratio = nf / n as f64;
                        arange_down(nf, ratio)
                            .into_iter()
                            .map(|v| round(v) - 1.0)
                            .collect()
                    }
                };
                let sig = sigmas_at(&ac, &ts);
                let max = sig.iter().cloned().fold(0.0, f64::max);
                let init = match spacing {
                    Spacing::Linspace | Spacing::Trailing => max,
                    Spacing::Leading => (max * max + 1.0).sqrt(),
                };
                (ts, sig, init)
            }
            SchedulerKind::DpmSolverPP2M => {
                let spacing = cfg.spacing.unwrap_or(Spacing::Linspace);
                let ts: Vec<f64> = match spacing {
                    Spacing::Linspace => {
                        let v = linspace_f64(0.0, nf - 1.0, n + 1);
                        v.into_iter().rev().take(n).map(round).collect()
                    }
                    Spacing::Leading => {
                        let ratio = (n_train / (n + 1)) as f64;
                        (1..=n)
                            .rev()
                            .map(|i| round(i as f64 * ratio) + offset)
                            .collect()
                    }
                    Spacing::Trailing => {
                        let ratio = nf / n as f64;
                        arange_down(nf, ratio)
                            .into_iter()
                            .map(|v| round(v) - 1.0)
                            .collect()
                    }
                };
                let sig = sigmas_at(&ac, &ts);
                (ts, sig, 1.0)
            }
        };
        if let Some(&bad) = timesteps.iter().find(|&&t| t < 0.0 || t > nf - 1.0) {
            return Err(Error::Invalid(format!(
                "{steps} steps with this spacing and steps_offset give timestep {bad}, outside 0..{n_train}"
            )));
        }
        Ok(Self {
            kind,
            prediction: cfg.prediction,
            timesteps,
            sigmas,
            init_noise_sigma,
            final_alpha_cumprod: if cfg.set_alpha_to_one { 1.0 } else { ac[0] },
            alphas_cumprod: ac,
            num_train_timesteps: n_train,
            clip_sample: cfg.clip_sample,
            eta: 0.0,
            previous_x0: None,
            lower_order_nums: 0,
        })
    }

    pub fn len(&self) -> usize {
        self.timesteps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.timesteps.is_empty()
    }

    /// Whether a step takes fresh noise (Euler ancestral; DDIM with eta > 0).
    pub fn needs_noise(&self) -> bool {
        match self.kind {
            SchedulerKind::EulerAncestral => true,
            SchedulerKind::Ddim => self.eta > 0.0,
            _ => false,
        }
    }

    /// What the UNet is given at step `i` (Euler's inputs are divided by sqrt(sigma^2 + 1)).
    pub fn scale_model_input(&self, x: &Tensor, i: usize) -> CResult<Tensor> {
        match self.kind {
            SchedulerKind::Euler | SchedulerKind::EulerAncestral => {
                let s = self.sigmas[i];
                x / (s * s + 1.0).sqrt()
            }
            _ => Ok(x.clone()),
        }
    }

    /// Clean latents noised to step `i`'s level (diffusers' `add_noise`, for
    /// image-to-image): `sqrt(a) x0 + sqrt(1 - a) noise` for DDIM, `x0 + sigma noise` for
    /// Euler, `alpha x0 + sigma noise` for DPM-Solver.
    pub fn add_noise(&self, x0: &Tensor, noise: &Tensor, i: usize) -> CResult<Tensor> {
        self.check_index(i)?;
        match self.kind {
            SchedulerKind::Ddim => {
                let a = self.alphas_cumprod[self.timesteps[i] as usize];
                (x0 * a.sqrt())? + (noise * (1.0 - a).sqrt())?
            }
            SchedulerKind::Euler | SchedulerKind::EulerAncestral => x0 + (noise * self.sigmas[i])?,
            SchedulerKind::DpmSolverPP2M => {
                let s = self.sigmas[i];
                let a = 1.0 / (s * s + 1.0).sqrt();
                (x0 * a)? + (noise * (s * a))?
            }
        }
    }

    /// One update from step `i`'s sample and (guided) model output. Returns the next sample
    /// and the step's prediction of x0. `noise` (same shape) is used when
    /// [`Schedule::needs_noise`].
    pub fn step(
        &mut self,
        i: usize,
        model_output: &Tensor,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> CResult<(Tensor, Tensor)> {
        let x0 = self.predict_x0(i, model_output, sample)?;
        let next = self.update(i, &x0, model_output, sample, noise)?;
        Ok((next, x0))
    }

    fn check_index(&self, i: usize) -> CResult<()> {
        if i >= self.len() {
            candle_core::bail!("step {i} of a {}-step schedule", self.len());
        }
        Ok(())
    }

    /// DDIM's alpha_t and the alpha of the timestep it jumps to.
    fn ddim_alphas(&self, i: usize) -> (f64, f64) {
        let t = self.timesteps[i] as usize;
        let prev = t as i64 - (self.num_train_timesteps / self.len()) as i64;
        let a_prev = if prev >= 0 {
            self.alphas_cumprod[prev as usize]
        } else {
            self.final_alpha_cumprod
        };
        (self.alphas_cumprod[t], a_prev)
    }

    /// The sampler's prediction of the clean latent at step `i` (`pred_original_sample`;
    /// DPM-Solver's converted model output).
    pub fn predict_x0(&self, i: usize, model_output: &Tensor, sample: &Tensor) -> CResult<Tensor> {
        self.check_index(i)?;
        // (signal, noise) scales of the sample: x_t = a * x0 + s * eps.
        let (a, s) = match self.kind {
            SchedulerKind::Ddim => {
                let (a_t, _) = self.ddim_alphas(i);
                (a_t.sqrt(), (1.0 - a_t).sqrt())
            }
            SchedulerKind::Euler | SchedulerKind::EulerAncestral => {
                // Euler's sample is x0 + sigma * eps, i.e. (1 / c) * x_t with c = sqrt(sigma^2 + 1).
                let sigma = self.sigmas[i];
                let c = (sigma * sigma + 1.0).sqrt();
                return match self.prediction {
                    Prediction::Epsilon => sample - (model_output * sigma)?,
                    Prediction::VPrediction => {
                        (model_output * (-sigma / c))? + (sample / (sigma * sigma + 1.0))?
                    }
                    Prediction::Sample => Ok(model_output.clone()),
                };
            }
            SchedulerKind::DpmSolverPP2M => {
                let sigma = self.sigmas[i];
                let a = 1.0 / (sigma * sigma + 1.0).sqrt();
                (a, sigma * a)
            }
        };
        let x0 = match self.prediction {
            Prediction::Epsilon => ((sample - (model_output * s)?)? / a)?,
            Prediction::VPrediction => ((sample * a)? - (model_output * s)?)?,
            Prediction::Sample => model_output.clone(),
        };
        match (self.kind, self.clip_sample) {
            (SchedulerKind::Ddim, Some(r)) => x0.clamp(-r, r),
            _ => Ok(x0),
        }
    }

    /// The next sample from step `i`'s x0 prediction (possibly replaced by a tap). DDIM also
    /// takes its noise direction from the model output.
    pub fn update(
        &mut self,
        i: usize,
        x0: &Tensor,
        model_output: &Tensor,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> CResult<Tensor> {
        self.check_index(i)?;
        let kind = self.kind;
        let need_noise = || {
            noise.ok_or_else(|| {
                candle_core::Error::Msg(format!("{kind:?} needs noise at every step"))
            })
        };
        match self.kind {
            SchedulerKind::Ddim => {
                let (a_t, a_prev) = self.ddim_alphas(i);
                let (sa, sb) = (a_t.sqrt(), (1.0 - a_t).sqrt());
                let eps = match self.prediction {
                    Prediction::Epsilon => model_output.clone(),
                    Prediction::VPrediction => ((model_output * sa)? + (sample * sb)?)?,
                    Prediction::Sample => ((sample - (model_output * sa)?)? / sb)?,
                };
                let variance = (1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev);
                let std = self.eta * variance.max(0.0).sqrt();
                let dir = (&eps * (1.0 - a_prev - std * std).max(0.0).sqrt())?;
                let next = ((x0 * a_prev.sqrt())? + dir)?;
                if std > 0.0 {
                    next + (need_noise()? * std)?
                } else {
                    Ok(next)
                }
            }
            SchedulerKind::Euler | SchedulerKind::EulerAncestral => {
                let sigma = self.sigmas[i];
                let derivative = ((sample - x0)? / sigma)?;
                let to = self.sigmas[i + 1];
                if self.kind == SchedulerKind::Euler {
                    return sample + (derivative * (to - sigma))?;
                }
                let up = (to * to * (sigma * sigma - to * to) / (sigma * sigma))
                    .max(0.0)
                    .sqrt();
                let down = (to * to - up * up).max(0.0).sqrt();
                (sample + (derivative * (down - sigma))?)? + (need_noise()? * up)?
            }
            SchedulerKind::DpmSolverPP2M => {
                let alpha_sigma = |s: f64| {
                    let a = 1.0 / (s * s + 1.0).sqrt();
                    (a, s * a)
                };
                let lambda = |(a, s): (f64, f64)| a.ln() - s.ln();
                let s0 = alpha_sigma(self.sigmas[i]);
                let (a_t, s_t) = alpha_sigma(self.sigmas[i + 1]);
                let h = lambda((a_t, s_t)) - lambda(s0);
                // exp(-h) - 1 is -1 at the last step, where sigma is 0 and h infinite.
                let em1 = (-h).exp() - 1.0;
                let ratio = s_t / s0.1;
                // The last step is first order (final_sigmas_type "zero"), and so is the first.
                let first_order = self.lower_order_nums < 1 || i == self.len() - 1;
                let next = match (&self.previous_x0, first_order) {
                    (Some(m1), false) => {
                        let h0 = lambda(s0) - lambda(alpha_sigma(self.sigmas[i - 1]));
                        let d1 = ((x0 - m1)? * (h / h0))?;
                        (((sample * ratio)? - (x0 * (a_t * em1))?)? - (d1 * (0.5 * a_t * em1))?)?
                    }
                    _ => ((sample * ratio)? - (x0 * (a_t * em1))?)?,
                };
                self.previous_x0 = Some(x0.clone());
                self.lower_order_nums = (self.lower_order_nums + 1).min(2);
                Ok(next)
            }
        }
    }
}

/// numpy.arange(start, 0, -step): start, start - step, ... while positive.
fn arange_down(start: f64, step: f64) -> Vec<f64> {
    let n = (start / step).ceil() as usize;
    (0..n)
        .map(|k| start - k as f64 * step)
        .filter(|&v| v > 0.0)
        .collect()
}

/// sigma(t) = sqrt((1 - a_t) / a_t), interpolated at (possibly fractional) `timesteps` as
/// numpy.interp does, with the final 0 appended; f32 values as diffusers stores them.
fn sigmas_at(ac: &[f64], timesteps: &[f64]) -> Vec<f64> {
    let all: Vec<f64> = ac
        .iter()
        .map(|&a| {
            let a = a as f32;
            ((1.0 - a) / a).sqrt() as f64
        })
        .collect();
    let mut s: Vec<f64> = timesteps
        .iter()
        .map(|&t| interp(t, &all) as f32 as f64)
        .collect();
    s.push(0.0);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_rounding_and_ranges() {
        // np.linspace(0, 999, 7).round() == [0, 166, 333, 500, 666, 832, 999]
        let v: Vec<f64> = linspace_f64(0.0, 999.0, 7)
            .into_iter()
            .map(f64::round_ties_even)
            .collect();
        assert_eq!(v, vec![0.0, 166.0, 333.0, 500.0, 666.0, 832.0, 999.0]);
        assert_eq!(
            arange_down(1000.0, 250.0),
            vec![1000.0, 750.0, 500.0, 250.0]
        );
        assert_eq!(arange_down(1000.0, 1000.0 / 7.0).len(), 7);
        assert!((interp(1.5, &[0.0, 1.0, 3.0]) - 2.0).abs() < 1e-12);
    }
}
