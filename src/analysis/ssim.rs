//! Reconstruction quality between two same-shaped image sites (e.g. `image` and
//! `vae.decoder.out`): MSE, PSNR and SSIM, so `infoloss` can say how much of a picture
//! survives the trip through the latent.
//!
//! SSIM follows Wang et al. (2004) exactly as scikit-image computes it with
//! `gaussian_weights=True, sigma=1.5, use_sample_covariance=False`: an 11x11 Gaussian
//! window, K1 = 0.01, K2 = 0.03, statistics only where the window fits inside the image
//! ('valid' filtering), one mean per channel, channels averaged.

use crate::{Error, Result};

/// Standard deviation of the Gaussian SSIM window, in pixels.
pub const SSIM_SIGMA: f64 = 1.5;
/// Half-width of the window: scikit-image truncates the Gaussian at 3.5 sigma, giving
/// `int(3.5 * 1.5 + 0.5) = 5`, so the window is 11x11.
pub const SSIM_RADIUS: usize = 5;
const K1: f64 = 0.01;
const K2: f64 = 0.03;

/// The shape of one image sample, in CHW order (how image sites are recorded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageShape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl ImageShape {
    pub fn new(channels: usize, height: usize, width: usize) -> Self {
        Self {
            channels,
            height,
            width,
        }
    }

    pub fn numel(&self) -> usize {
        self.channels * self.height * self.width
    }
}

/// `3 x 32 x 32 (channel x height x width)`: how messages name a shape.
impl std::fmt::Display for ImageShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} x {} x {} (channel x height x width)",
            self.channels, self.height, self.width
        )
    }
}

/// Reconstruction metrics of one sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reconstruction {
    pub mse: f64,
    /// Decibels; `f64::INFINITY` when the two images are identical.
    pub psnr: f64,
    pub ssim: f64,
}

/// Whether images of this shape are large enough for the 11x11 SSIM window.
pub fn ssim_applies(shape: ImageShape) -> bool {
    let win = 2 * SSIM_RADIUS + 1;
    shape.channels > 0 && shape.height >= win && shape.width >= win
}

/// MSE, PSNR and SSIM between an original and its reconstruction. SSIM is NaN for
/// images smaller than its window (e.g. 8x8 latents), where it is undefined.
pub fn reconstruction(
    original: &[f32],
    reconstructed: &[f32],
    shape: ImageShape,
    data_range: f64,
) -> Result<Reconstruction> {
    let mse = mse(original, reconstructed)?;
    Ok(Reconstruction {
        mse,
        psnr: psnr(mse, data_range)?,
        ssim: if ssim_applies(shape) {
            ssim(original, reconstructed, shape, data_range)?
        } else {
            f64::NAN
        },
    })
}

/// Mean squared error over all values.
pub fn mse(a: &[f32], b: &[f32]) -> Result<f64> {
    if a.len() != b.len() || a.is_empty() {
        return Err(Error::Invalid(format!(
            "MSE needs two non-empty images of the same size, got {} and {} values",
            a.len(),
            b.len()
        )));
    }
    let sum: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum();
    Ok(sum / a.len() as f64)
}

/// Peak signal-to-noise ratio in dB: `10 log10(data_range² / mse)`.
pub fn psnr(mse: f64, data_range: f64) -> Result<f64> {
    check_range(data_range)?;
    if mse.is_nan() || mse < 0.0 {
        return Err(Error::Invalid(format!("PSNR needs mse >= 0, got {mse}")));
    }
    if mse == 0.0 {
        return Ok(f64::INFINITY);
    }
    Ok(10.0 * (data_range * data_range / mse).log10())
}

/// Mean SSIM over channels. `data_range` is max - min of the pixel scale (2 for [-1, 1]).
pub fn ssim(a: &[f32], b: &[f32], shape: ImageShape, data_range: f64) -> Result<f64> {
    check_range(data_range)?;
    let win = 2 * SSIM_RADIUS + 1;
    if shape.height < win || shape.width < win || shape.channels == 0 {
        return Err(Error::Invalid(format!(
            "SSIM needs images of at least {win}x{win} pixels with a channel, got {shape}"
        )));
    }
    if a.len() != shape.numel() || b.len() != shape.numel() {
        return Err(Error::Invalid(format!(
            "SSIM: image shape {shape} has {} values, got {} and {}",
            shape.numel(),
            a.len(),
            b.len()
        )));
    }
    let kernel = gaussian_kernel(SSIM_SIGMA, SSIM_RADIUS);
    let plane = shape.height * shape.width;
    let total: f64 = (0..shape.channels)
        .map(|c| {
            let range = c * plane..(c + 1) * plane;
            channel_ssim(&a[range.clone()], &b[range], shape, &kernel, data_range)
        })
        .sum();
    Ok(total / shape.channels as f64)
}

fn check_range(data_range: f64) -> Result<()> {
    if data_range.is_finite() && data_range > 0.0 {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "data_range must be a positive number (max - min of the pixel scale), got {data_range}"
        )))
    }
}

/// Normalised 1-D Gaussian weights on `-radius..=radius`, like scipy.ndimage.
fn gaussian_kernel(sigma: f64, radius: usize) -> Vec<f64> {
    let r = radius as f64;
    let w: Vec<f64> = (0..=2 * radius)
        .map(|i| {
            let x = i as f64 - r;
            (-0.5 * x * x / (sigma * sigma)).exp()
        })
        .collect();
    let sum: f64 = w.iter().sum();
    w.into_iter().map(|v| v / sum).collect()
}

/// Separable 'valid' filtering of one plane: output is (h - 2r) x (w - 2r).
fn filter_valid(x: &[f64], h: usize, w: usize, kernel: &[f64]) -> Vec<f64> {
    let k = kernel.len();
    let (oh, ow) = (h + 1 - k, w + 1 - k);
    let mut rows = vec![0.0; h * ow];
    for i in 0..h {
        let src = &x[i * w..(i + 1) * w];
        for j in 0..ow {
            rows[i * ow + j] = kernel.iter().zip(&src[j..j + k]).map(|(a, b)| a * b).sum();
        }
    }
    let mut out = vec![0.0; oh * ow];
    for i in 0..oh {
        for (t, &kt) in kernel.iter().enumerate() {
            let src = &rows[(i + t) * ow..(i + t + 1) * ow];
            for (o, &s) in out[i * ow..(i + 1) * ow].iter_mut().zip(src) {
                *o += kt * s;
            }
        }
    }
    out
}

fn channel_ssim(a: &[f32], b: &[f32], shape: ImageShape, kernel: &[f64], range: f64) -> f64 {
    let (h, w) = (shape.height, shape.width);
    let x: Vec<f64> = a.iter().map(|&v| v as f64).collect();
    let y: Vec<f64> = b.iter().map(|&v| v as f64).collect();
    let xx: Vec<f64> = x.iter().map(|v| v * v).collect();
    let yy: Vec<f64> = y.iter().map(|v| v * v).collect();
    let xy: Vec<f64> = x.iter().zip(&y).map(|(p, q)| p * q).collect();
    let [ux, uy, uxx, uyy, uxy] = [&x, &y, &xx, &yy, &xy].map(|p| filter_valid(p, h, w, kernel));
    let c1 = (K1 * range).powi(2);
    let c2 = (K2 * range).powi(2);
    let mut sum = 0.0;
    for i in 0..ux.len() {
        let (mx, my) = (ux[i], uy[i]);
        let vx = uxx[i] - mx * mx;
        let vy = uyy[i] - my * my;
        let vxy = uxy[i] - mx * my;
        sum +=
            ((2.0 * mx * my + c1) * (2.0 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2));
    }
    sum / ux.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    // The fixtures below are generated by the same formulas in numpy (cast to f32), and
    // the expected SSIM values come from scikit-image 0.26.0:
    //   structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
    //       use_sample_covariance=False, data_range=R, channel_axis=-1)
    // on the HWC transpose of these CHW arrays.
    fn img(c: usize, h: usize, w: usize, phase: f64) -> Vec<f32> {
        let mut v = Vec::with_capacity(c * h * w);
        for ci in 0..c {
            for i in 0..h {
                for j in 0..w {
                    let (cf, fi, fj) = (ci as f64, i as f64, j as f64);
                    let val = 0.8
                        * (0.37 * fi + 0.23 * fj + 1.1 * cf + phase).sin()
                        * (0.05 * fi * fj + cf).cos();
                    v.push(val as f32);
                }
            }
        }
        v
    }

    fn noise(c: usize, h: usize, w: usize, seed: usize) -> Vec<f32> {
        let mut v = Vec::with_capacity(c * h * w);
        for ci in 0..c {
            for i in 0..h {
                for j in 0..w {
                    let t = (((ci * 1000 + i * 37 + j + seed) as f64) * 12.9898).sin() * 43758.5453;
                    v.push((t - t.floor() - 0.5) as f32);
                }
            }
        }
        v
    }

    #[test]
    fn noise_fixture_matches_numpy() {
        assert_eq!(noise(1, 1, 3, 0), vec![-0.5, 0.421_690_4, -0.442_781_84]);
    }

    #[test]
    fn identical_images_have_ssim_one_and_infinite_psnr() {
        let a = img(3, 16, 16, 0.0);
        let r = reconstruction(&a, &a, ImageShape::new(3, 16, 16), 2.0).unwrap();
        assert!((r.ssim - 1.0).abs() < 1e-12, "{}", r.ssim);
        assert_eq!(r.mse, 0.0);
        assert_eq!(r.psnr, f64::INFINITY);
    }

    #[test]
    fn ssim_matches_scikit_image() {
        let shape = ImageShape::new(3, 16, 16);
        let a = img(3, 16, 16, 0.0);
        let offset: Vec<f32> = a.iter().map(|v| v + 0.1).collect();
        let n = noise(3, 16, 16, 0);
        let noisy: Vec<f32> = a.iter().zip(&n).map(|(v, e)| v + 0.2 * e).collect();
        let b = img(3, 16, 16, 0.9);
        let cases = [
            ("offset", &offset, 0.960_312_016_000_333_1),
            ("noise", &noisy, 0.981_269_519_727_497_8),
            ("different", &b, 0.342_296_277_879_099_44),
        ];
        for (name, other, want) in cases {
            let got = ssim(&a, other, shape, 2.0).unwrap();
            assert!((got - want).abs() < 1e-7, "{name}: {got} vs skimage {want}");
        }
        // Non-square, two channels, data_range 1.
        let a2 = img(2, 13, 20, 0.3);
        let n2 = noise(2, 13, 20, 5);
        let b2: Vec<f32> = a2.iter().zip(&n2).map(|(v, e)| v * 0.7 + 0.3 * e).collect();
        let got = ssim(&a2, &b2, ImageShape::new(2, 13, 20), 1.0).unwrap();
        assert!((got - 0.831_597_257_776_000_8).abs() < 1e-7, "{got}");
    }

    #[test]
    fn psnr_is_the_closed_form() {
        // Every value off by 0.1 on range 2: PSNR = 10 log10(4 / 0.01) = 26.0206 dB.
        let a = vec![0.5f32; 64];
        let b = vec![0.4f32; 64];
        let m = mse(&a, &b).unwrap();
        assert!((m - 0.01).abs() < 1e-8);
        let p = psnr(m, 2.0).unwrap();
        assert!((p - 10.0 * 400f64.log10()).abs() < 1e-5, "{p}");
        assert!((psnr(0.25, 1.0).unwrap() - 10.0 * 4f64.log10()).abs() < 1e-12);
    }

    #[test]
    fn bad_shapes_and_ranges_are_errors() {
        let a = img(1, 16, 16, 0.0);
        assert!(ssim(&a, &a, ImageShape::new(1, 8, 32), 2.0).is_err());
        assert!(ssim(&a, &a[..100], ImageShape::new(1, 16, 16), 2.0).is_err());
        assert!(ssim(&a, &a, ImageShape::new(1, 16, 16), 0.0).is_err());
        let small = img(1, 10, 10, 0.0);
        let msg = ssim(&small, &small, ImageShape::new(1, 10, 10), 2.0)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("11x11"), "{msg}");
        // People read shapes, not Rust's Debug output.
        assert!(
            msg.contains("got 1 x 10 x 10 (channel x height x width)"),
            "{msg}"
        );
        assert!(!msg.contains("ImageShape"), "{msg}");
        assert!(mse(&a, &a[..3]).is_err());
        // Too small for SSIM: the other metrics still come out.
        let r = reconstruction(&small, &small, ImageShape::new(1, 10, 10), 2.0).unwrap();
        assert!(r.ssim.is_nan() && r.mse == 0.0);
    }
}
