//! The noise schedule shared by training (DDPM forward noising) and sampling (DDIM).
//!
//! Stable Diffusion's choices, so that what users know from diffusers carries over:
//! "scaled linear" betas, `leading` timestep spacing with `steps_offset = 1`, and the last
//! step landing on `alphas_cumprod[0]` (`set_alpha_to_one = false`).

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchedulerConfig {
    pub train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
        }
    }
}

/// Betas and their cumulative products, in f64 so that the closed forms hold to 1e-12.
#[derive(Debug, Clone)]
pub struct Scheduler {
    pub betas: Vec<f64>,
    pub alphas_cumprod: Vec<f64>,
}

/// The coefficients of one DDIM update `t -> prev`, exposed so that callers (and tests) can
/// check the update by hand.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DdimCoefficients {
    pub alpha_t: f64,
    pub alpha_prev: f64,
    /// Standard deviation of the fresh noise added at this step (0 when `eta = 0`).
    pub sigma: f64,
}

impl Scheduler {
    pub fn new(cfg: &SchedulerConfig) -> Self {
        let n = cfg.train_timesteps.max(1);
        let (lo, hi) = (cfg.beta_start.sqrt(), cfg.beta_end.sqrt());
        let betas: Vec<f64> = (0..n)
            .map(|i| {
                let frac = if n == 1 {
                    0.0
                } else {
                    i as f64 / (n - 1) as f64
                };
                let s = lo + (hi - lo) * frac;
                s * s
            })
            .collect();
        let mut acc = 1.0;
        let alphas_cumprod = betas
            .iter()
            .map(|b| {
                acc *= 1.0 - b;
                acc
            })
            .collect();
        Self {
            betas,
            alphas_cumprod,
        }
    }

    pub fn train_timesteps(&self) -> usize {
        self.betas.len()
    }

    /// The DDIM timesteps for `steps` sampling steps, noisiest first (981, 961, ..., 1 for
    /// 50 steps of 1000).
    pub fn timesteps(&self, steps: usize) -> Vec<usize> {
        let steps = steps.clamp(1, self.train_timesteps());
        let ratio = self.train_timesteps() / steps;
        (0..steps).rev().map(|i| i * ratio + 1).collect()
    }

    /// The timesteps img2img denoises through for `strength` in [0, 1]: the last
    /// `round_down(steps * strength)` of [`Self::timesteps`], as diffusers does.
    pub fn img2img_timesteps(&self, steps: usize, strength: f64) -> Vec<usize> {
        let all = self.timesteps(steps);
        let keep = ((all.len() as f64 * strength.clamp(0.0, 1.0)) as usize).min(all.len());
        all[all.len() - keep..].to_vec()
    }

    /// Coefficients of the DDIM update from `t` to `t - train_timesteps / steps`.
    pub fn ddim_coefficients(&self, t: usize, steps: usize, eta: f64) -> DdimCoefficients {
        let ratio = self.train_timesteps() / steps.clamp(1, self.train_timesteps());
        let alpha_t = self.alphas_cumprod[t.min(self.train_timesteps() - 1)];
        let alpha_prev = if t >= ratio {
            self.alphas_cumprod[t - ratio]
        } else {
            self.alphas_cumprod[0]
        };
        let variance = (1.0 - alpha_prev) / (1.0 - alpha_t) * (1.0 - alpha_t / alpha_prev);
        DdimCoefficients {
            alpha_t,
            alpha_prev,
            sigma: eta * variance.max(0.0).sqrt(),
        }
    }

    /// The clean-latent estimate implied by a noise prediction:
    /// `x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)`.
    pub fn x0_from_eps(&self, x_t: &Tensor, eps: &Tensor, c: &DdimCoefficients) -> Result<Tensor> {
        let a = c.alpha_t;
        (x_t - (eps * (1.0 - a).sqrt())?)? / a.sqrt()
    }

    /// One DDIM update, diffusers' formula:
    /// `x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma z`.
    /// `x0` is taken as given (it may have been replaced by a tap), `eps` is the guided
    /// noise prediction, `z` standard noise (ignored when `sigma = 0`).
    pub fn ddim_step(
        &self,
        x0: &Tensor,
        eps: &Tensor,
        z: Option<&Tensor>,
        c: &DdimCoefficients,
    ) -> Result<Tensor> {
        let dir = (1.0 - c.alpha_prev - c.sigma * c.sigma).max(0.0).sqrt();
        let mut x = ((x0 * c.alpha_prev.sqrt())? + (eps * dir)?)?;
        if let (Some(z), true) = (z, c.sigma > 0.0) {
            x = (x + (z * c.sigma)?)?;
        }
        Ok(x)
    }

    /// DDPM forward noising with one timestep per batch row:
    /// `x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise`.
    pub fn add_noise(&self, x0: &Tensor, noise: &Tensor, timesteps: &[usize]) -> Result<Tensor> {
        let b = x0.dim(0)?;
        if timesteps.len() != b {
            candle_core::bail!("add_noise: {} timesteps for {b} rows", timesteps.len());
        }
        let mut bshape = vec![1usize; x0.rank()];
        bshape[0] = b;
        let pick = |f: &dyn Fn(f64) -> f64| -> Result<Tensor> {
            let v: Vec<f32> = timesteps
                .iter()
                .map(|&t| f(self.alphas_cumprod[t.min(self.train_timesteps() - 1)]) as f32)
                .collect();
            Tensor::from_vec(v, bshape.as_slice(), x0.device())
        };
        let sa = pick(&|a| a.sqrt())?;
        let sb = pick(&|a| (1.0 - a).sqrt())?;
        x0.broadcast_mul(&sa)? + noise.broadcast_mul(&sb)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    // numpy: b = np.linspace(0.00085**0.5, 0.012**0.5, 1000)**2; a = np.cumprod(1 - b)
    const NUMPY: [(usize, f64, f64); 7] = [
        (0, 0.00085, 0.99915),
        (1, 0.0008546986554056862, 0.9982960278384514),
        (100, 0.0013839725615898781, 0.8942234775865594),
        (500, 0.00481495414171188, 0.2763326838229746),
        (750, 0.00801157933797015, 0.05616984800293729),
        (981, 0.011684755485241208, 0.005775500139495751),
        (999, 0.012, 0.004660098513077238),
    ];

    #[test]
    fn betas_and_alphas_cumprod_match_numpy() {
        let s = Scheduler::new(&SchedulerConfig::default());
        for (t, beta, acp) in NUMPY {
            assert!((s.betas[t] - beta).abs() < 1e-15, "beta[{t}]");
            assert!(
                (s.alphas_cumprod[t] - acp).abs() < 1e-12,
                "alphas_cumprod[{t}]"
            );
        }
    }

    #[test]
    fn timesteps_follow_leading_spacing_with_offset_one() {
        let s = Scheduler::new(&SchedulerConfig::default());
        let ts = s.timesteps(50);
        assert_eq!(ts.len(), 50);
        assert_eq!((ts[0], ts[1], ts[49]), (981, 961, 1));
        assert_eq!(s.img2img_timesteps(50, 0.5), ts[25..].to_vec());
        assert_eq!(s.img2img_timesteps(50, 1.0), ts);
        assert!(s.img2img_timesteps(50, 0.0).is_empty());
        // The last step goes to alphas_cumprod[0], not 1.
        let c = s.ddim_coefficients(1, 50, 0.0);
        assert_eq!(c.alpha_prev, s.alphas_cumprod[0]);
        let c = s.ddim_coefficients(981, 50, 0.0);
        assert_eq!(c.alpha_prev, s.alphas_cumprod[961]);
    }

    #[test]
    fn ddim_with_a_perfect_noise_predictor_recovers_x0() -> Result<()> {
        let dev = Device::Cpu;
        let s = Scheduler::new(&SchedulerConfig::default());
        let x0 = Tensor::new(&[[0.7f32, -1.2, 0.05, 2.0]], &dev)?;
        let eps = Tensor::new(&[[0.3f32, 1.1, -0.4, -2.2]], &dev)?;
        let steps = 20;
        let ts = s.timesteps(steps);
        let mut x = s.add_noise(&x0, &eps, &[ts[0]])?;
        for &t in &ts {
            let c = s.ddim_coefficients(t, steps, 0.0);
            // The "perfect" predictor knows the noise that is in x_t now.
            let pred_x0 = s.x0_from_eps(&x, &eps, &c)?;
            x = s.ddim_step(&pred_x0, &eps, None, &c)?;
        }
        // x ends at alphas_cumprod[0] noise level: x = sqrt(a0) x0 + sqrt(1-a0) eps.
        let expected = s.add_noise(&x0, &eps, &[0])?;
        let diff = (x - expected)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "diff {diff}");
        Ok(())
    }

    #[test]
    fn ddim_sigma_matches_the_closed_form() {
        let s = Scheduler::new(&SchedulerConfig::default());
        let c = s.ddim_coefficients(500, 50, 1.0);
        let (a, ap) = (0.2763326838229746, s.alphas_cumprod[480]);
        let expected = ((1.0 - ap) / (1.0 - a) * (1.0 - a / ap)).sqrt();
        assert!((c.sigma - expected).abs() < 1e-12);
        // With eta = 1 the DDIM variance equals DDPM's posterior variance for the jump.
        assert!(c.sigma > 0.0 && s.ddim_coefficients(500, 50, 0.0).sigma == 0.0);
    }

    #[test]
    fn add_noise_uses_each_rows_timestep() -> Result<()> {
        let dev = Device::Cpu;
        let s = Scheduler::new(&SchedulerConfig::default());
        let x0 = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &dev)?;
        let n = Tensor::new(&[[0.5f32, -0.5], [1.0, 0.0]], &dev)?;
        let got: Vec<Vec<f32>> = s.add_noise(&x0, &n, &[100, 500])?.to_vec2()?;
        let (a1, a2) = (0.8942234775865594f64, 0.2763326838229746f64);
        let want = [
            [
                a1.sqrt() + 0.5 * (1.0 - a1).sqrt(),
                2.0 * a1.sqrt() - 0.5 * (1.0 - a1).sqrt(),
            ],
            [3.0 * a2.sqrt() + (1.0 - a2).sqrt(), 4.0 * a2.sqrt()],
        ];
        for r in 0..2 {
            for c in 0..2 {
                assert!((got[r][c] as f64 - want[r][c]).abs() < 1e-5);
            }
        }
        Ok(())
    }
}
