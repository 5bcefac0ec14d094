//! Procedural dSprites-like shapes in RGB with known generative factors: the data the tiny
//! latent diffusion model learns from, and the ground truth every probe aims at.
//!
//! Geometry, in pixel units on a `size`×`size` canvas whose pixel `(row, col)` covers
//! `[col, col+1] × [row, row+1]` (x to the right, y down, like the image rows):
//! - every shape is a regular figure with circumradius `r = scale * size / 4`;
//! - its centre is at `(x * size, y * size)`, so `x`, `y` are fractions of the canvas width
//!   and height measured from the top-left corner, drawn in `[0.25, 0.75]` so that even the
//!   largest shape (`r = size / 4`) fits whatever its position and rotation;
//! - `rotation` is in radians, clockwise on screen (y points down). At rotation 0 the square
//!   is axis-aligned and the triangle points up. The square repeats every 90°, the triangle
//!   every 120° and the circle ignores rotation (like dSprites' ellipse): the factor is kept
//!   as drawn, so a probe must treat it as periodic.
//! - colour is `hue` at full saturation and value, multiplied by the pixel's coverage, on black.
//!
//! Edges are anti-aliased by 4×4 supersampling, only on pixels that the shape's edge crosses
//! (a signed-distance bound classifies the rest as fully inside or outside), which keeps the
//! renderer fast even when this crate is compiled without optimisation.

use std::f32::consts::{FRAC_PI_2, FRAC_PI_4, PI, TAU};

use rand::Rng;

use crate::rng;

/// Names of the shape classes, indexed by [`Factors::shape`].
pub const SHAPE_NAMES: [&str; 3] = ["square", "circle", "triangle"];
/// Seed of the training data.
pub const TRAIN_SEED: u64 = 0;
/// Seed of the evaluation data; never used for training.
pub const HELDOUT_SEED: u64 = 1_000_003;
/// Canvas side used by the built-in diffusion model.
pub const DEFAULT_SIZE: usize = 32;

/// Range of the centre coordinates `x`, `y` (fractions of the canvas).
const POSITION_RANGE: (f32, f32) = (0.25, 0.75);
/// Range of `scale` (fraction of the largest circumradius that fits, `size / 4`).
const SCALE_RANGE: (f32, f32) = (0.5, 1.0);
/// Supersamples per pixel side on edge pixels.
const SUPERSAMPLE: usize = 4;
/// Half the diagonal of a pixel: a pixel whose centre is further than this from the edge is
/// wholly on one side of it.
const HALF_PIXEL_DIAGONAL: f32 = 0.708;

/// The generative factors of one image. See the module note for what each one means.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Factors {
    /// Index into [`SHAPE_NAMES`].
    pub shape: u32,
    /// Circumradius as a fraction of `size / 4`, in `[0.5, 1.0]`.
    pub scale: f32,
    /// Radians in `[0, 2π)`, clockwise on screen.
    pub rotation: f32,
    /// Centre column as a fraction of the canvas width, in `[0.25, 0.75]`.
    pub x: f32,
    /// Centre row as a fraction of the canvas height (from the top), in `[0.25, 0.75]`.
    pub y: f32,
    /// Hue in `[0, 1)` (0 red, 1/3 green, 2/3 blue), at full saturation and value.
    pub hue: f32,
}

impl Factors {
    /// The shape's name, or "unknown" for an index outside [`SHAPE_NAMES`].
    pub fn shape_name(&self) -> &'static str {
        SHAPE_NAMES
            .get(self.shape as usize)
            .copied()
            .unwrap_or("unknown")
    }
}

/// An endless, deterministic dataset: image `index` of seed `seed` is always the same.
#[derive(Debug, Clone)]
pub struct Shapes {
    pub size: usize,
    pub seed: u64,
}

impl Shapes {
    /// A dataset of `size`×`size` images ([`DEFAULT_SIZE`] for the built-in model).
    pub fn new(size: usize, seed: u64) -> Self {
        Shapes { size, seed }
    }

    /// The factors of image `index`, drawn uniformly from their ranges.
    pub fn factors(&self, index: u64) -> Factors {
        let mut rng = rng::stream(self.seed, index);
        let shape = rng.gen_range(0..SHAPE_NAMES.len() as u32);
        let scale = uniform(&mut rng, SCALE_RANGE);
        // Drawn in f64 then narrowed: the narrowing can round up to exactly 2π, folded to 0.
        let rotation = (rng.gen::<f64>() * std::f64::consts::TAU) as f32;
        let rotation = if rotation >= TAU { 0.0 } else { rotation };
        let x = uniform(&mut rng, POSITION_RANGE);
        let y = uniform(&mut rng, POSITION_RANGE);
        let hue = rng.gen::<f32>();
        Factors {
            shape,
            scale,
            rotation,
            x,
            y,
            hue,
        }
    }

    /// Same as [`Shapes::factors`] but with the shape forced (for class-conditional data /
    /// eval); the other factors are those of `factors(index)`.
    pub fn factors_with_shape(&self, index: u64, shape: u32) -> Factors {
        Factors {
            shape,
            ..self.factors(index)
        }
    }

    /// The image of `f`, CHW, `3 * size * size` values in `[0, 1]`. A shape index outside
    /// [`SHAPE_NAMES`] gives a black canvas.
    pub fn render(&self, f: &Factors) -> Vec<f32> {
        let n = self.size;
        let mut out = vec![0.0f32; 3 * n * n];
        let Some(outline) = Outline::new(f, n) else {
            return out;
        };
        let rgb = hsv_to_rgb(f.hue);
        let (rows, cols) = outline.pixel_bounds(n);
        for row in rows {
            for col in cols.clone() {
                let coverage = outline.coverage(col as f32, row as f32);
                if coverage > 0.0 {
                    let at = row * n + col;
                    for (c, &channel) in rgb.iter().enumerate() {
                        out[c * n * n + at] = coverage * channel;
                    }
                }
            }
        }
        out
    }

    /// Images as a tensor `[B, 3, size, size]` scaled to `[-1, 1]` (the model's pixel range)
    /// plus their factors, in the order of `indices`.
    pub fn batch(
        &self,
        indices: impl IntoIterator<Item = u64>,
        device: &candle_core::Device,
    ) -> candle_core::Result<(Vec<Factors>, candle_core::Tensor)> {
        let factors: Vec<Factors> = indices.into_iter().map(|i| self.factors(i)).collect();
        let mut pixels = Vec::with_capacity(factors.len() * 3 * self.size * self.size);
        for f in &factors {
            pixels.extend(self.render(f).into_iter().map(|v| 2.0 * v - 1.0));
        }
        let shape = (factors.len(), 3, self.size, self.size);
        let images = candle_core::Tensor::from_vec(pixels, shape, device)?;
        Ok((factors, images))
    }
}

fn uniform(rng: &mut impl Rng, (lo, hi): (f32, f32)) -> f32 {
    lo + (hi - lo) * rng.gen::<f32>()
}

/// Full-saturation, full-value HSV to RGB.
fn hsv_to_rgb(hue: f32) -> [f32; 3] {
    let h6 = hue.rem_euclid(1.0) * 6.0;
    let r = ((h6 - 3.0).abs() - 1.0).clamp(0.0, 1.0);
    let g = (2.0 - (h6 - 2.0).abs()).clamp(0.0, 1.0);
    let b = (2.0 - (h6 - 4.0).abs()).clamp(0.0, 1.0);
    [r, g, b]
}

/// A shape placed on the canvas, in pixel units.
struct Outline {
    cx: f32,
    cy: f32,
    r: f32,
    kind: Kind,
}

enum Kind {
    Circle,
    /// Convex polygon as half-planes `normal · (p - centre) <= apothem`.
    Polygon {
        normals: Vec<(f32, f32)>,
        apothem: f32,
    },
}

impl Outline {
    fn new(f: &Factors, size: usize) -> Option<Self> {
        let r = f.scale * size as f32 * 0.25;
        let kind = match f.shape {
            0 => Kind::polygon(4, f.rotation + FRAC_PI_4, r),
            1 => Kind::Circle,
            2 => Kind::polygon(3, f.rotation - FRAC_PI_2, r),
            _ => return None,
        };
        Some(Outline {
            cx: f.x * size as f32,
            cy: f.y * size as f32,
            r,
            kind,
        })
    }

    /// Rows and columns of the pixels that may be touched: the circumcircle's bounding box.
    fn pixel_bounds(&self, size: usize) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        let span = |c: f32| {
            let lo = (c - self.r).floor().max(0.0) as usize;
            let hi = ((c + self.r).ceil().max(0.0) as usize).min(size);
            lo.min(hi)..hi
        };
        (span(self.cy), span(self.cx))
    }

    /// Signed distance bound from the outline (negative inside). Exact for the circle; for a
    /// polygon the largest half-plane distance, which never overstates the distance outside
    /// and is exact inside, so classifying a pixel by it is safe both ways.
    fn signed_distance(&self, px: f32, py: f32) -> f32 {
        let (dx, dy) = (px - self.cx, py - self.cy);
        match &self.kind {
            Kind::Circle => (dx * dx + dy * dy).sqrt() - self.r,
            Kind::Polygon { normals, apothem } => {
                let mut d = f32::NEG_INFINITY;
                for &(nx, ny) in normals {
                    d = d.max(nx * dx + ny * dy - apothem);
                }
                d
            }
        }
    }

    /// Fraction of pixel `[col, col+1] × [row, row+1]` inside the shape.
    fn coverage(&self, col: f32, row: f32) -> f32 {
        let d = self.signed_distance(col + 0.5, row + 0.5);
        if d >= HALF_PIXEL_DIAGONAL {
            return 0.0;
        }
        if d <= -HALF_PIXEL_DIAGONAL {
            return 1.0;
        }
        let step = 1.0 / SUPERSAMPLE as f32;
        let mut inside = 0usize;
        for sy in 0..SUPERSAMPLE {
            let py = row + (sy as f32 + 0.5) * step;
            for sx in 0..SUPERSAMPLE {
                let px = col + (sx as f32 + 0.5) * step;
                if self.signed_distance(px, py) <= 0.0 {
                    inside += 1;
                }
            }
        }
        inside as f32 / (SUPERSAMPLE * SUPERSAMPLE) as f32
    }
}

impl Kind {
    /// Regular `sides`-gon with circumradius `r` and a vertex at angle `first_vertex`.
    fn polygon(sides: usize, first_vertex: f32, r: f32) -> Self {
        let half_angle = PI / sides as f32;
        let normals = (0..sides)
            .map(|k| {
                let a = first_vertex + half_angle * (2 * k + 1) as f32;
                (a.cos(), a.sin())
            })
            .collect();
        Kind::Polygon {
            normals,
            apothem: r * half_angle.cos(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plane(img: &[f32], size: usize) -> Vec<f32> {
        // Coverage = brightest channel, since every covered pixel has value 1 at full coverage.
        (0..size * size)
            .map(|i| {
                img[i]
                    .max(img[size * size + i])
                    .max(img[2 * size * size + i])
            })
            .collect()
    }

    fn factors(shape: u32, scale: f32, rotation: f32, x: f32, y: f32) -> Factors {
        Factors {
            shape,
            scale,
            rotation,
            x,
            y,
            hue: 0.4,
        }
    }

    /// Textbook RGB -> HSV (max/min form), written independently of the renderer.
    fn rgb_to_hsv(r: f32, g: f32, b: f32) -> (f32, f32, f32) {
        let max = r.max(g).max(b);
        let min = r.min(g).min(b);
        let delta = max - min;
        let h = if delta == 0.0 {
            0.0
        } else if max == r {
            60.0 * ((g - b) / delta).rem_euclid(6.0)
        } else if max == g {
            60.0 * ((b - r) / delta + 2.0)
        } else {
            60.0 * ((r - g) / delta + 4.0)
        };
        let s = if max == 0.0 { 0.0 } else { delta / max };
        (h / 360.0, s, max)
    }

    #[test]
    fn same_seed_and_index_give_identical_pixels() {
        let data = Shapes::new(32, TRAIN_SEED);
        let a = data.render(&data.factors(5));
        assert_eq!(a, Shapes::new(32, TRAIN_SEED).render(&data.factors(5)));
        assert_ne!(a, data.render(&data.factors(6)));
        let heldout = Shapes::new(32, HELDOUT_SEED);
        assert_ne!(data.factors(5), heldout.factors(5));
    }

    #[test]
    fn factors_cover_their_ranges() {
        let data = Shapes::new(32, TRAIN_SEED);
        let all: Vec<Factors> = (0..6000).map(|i| data.factors(i)).collect();
        let mut counts = [0usize; 3];
        for f in &all {
            counts[f.shape as usize] += 1;
            assert!((0.5..=1.0).contains(&f.scale), "{f:?}");
            assert!((0.0..TAU).contains(&f.rotation), "{f:?}");
            assert!(
                (0.25..=0.75).contains(&f.x) && (0.25..=0.75).contains(&f.y),
                "{f:?}"
            );
            assert!((0.0..1.0).contains(&f.hue), "{f:?}");
        }
        // Uniform: each class near 1/3, each continuous factor reaches both ends of its range.
        assert!(
            counts.iter().all(|&c| (1800..2200).contains(&c)),
            "{counts:?}"
        );
        let span = |get: fn(&Factors) -> f32| {
            let lo = all.iter().map(get).fold(f32::INFINITY, f32::min);
            let hi = all.iter().map(get).fold(f32::NEG_INFINITY, f32::max);
            (lo, hi)
        };
        let near = |(lo, hi): (f32, f32), (a, b): (f32, f32)| {
            (lo - a).abs() < 0.01 * (b - a) && (hi - b).abs() < 0.01 * (b - a)
        };
        assert!(near(span(|f| f.scale), (0.5, 1.0)));
        assert!(near(span(|f| f.rotation), (0.0, TAU)));
        assert!(near(span(|f| f.x), (0.25, 0.75)));
        assert!(near(span(|f| f.y), (0.25, 0.75)));
        assert!(near(span(|f| f.hue), (0.0, 1.0)));

        let forced = data.factors_with_shape(17, 2);
        assert_eq!(forced.shape, 2);
        assert_eq!(forced.shape_name(), "triangle");
        assert_eq!(
            Factors {
                shape: 2,
                ..data.factors(17)
            },
            forced
        );
    }

    #[test]
    fn largest_shapes_at_the_corners_stay_inside_the_canvas() {
        // At the extremes the shape touches the edge (the largest circle is tangent to it, so
        // those border pixels are lit) but loses no area to it.
        let size = 64;
        let data = Shapes::new(size, TRAIN_SEED);
        for shape in 0..3 {
            for step in 0..12 {
                let rotation = step as f32 * TAU / 12.0;
                let centred = plane(&data.render(&factors(shape, 1.0, rotation, 0.5, 0.5)), size);
                let area: f32 = centred.iter().sum();
                for (x, y) in [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)] {
                    let img = plane(&data.render(&factors(shape, 1.0, rotation, x, y)), size);
                    // Nothing is clipped: the whole area is still on the canvas.
                    let moved: f32 = img.iter().sum();
                    assert!(
                        (moved - area).abs() < 0.005 * area,
                        "{shape} {rotation} {x} {y}"
                    );
                }
            }
        }
        // The check notices clipping: a circle pushed past the range loses area.
        let full: f32 = plane(&data.render(&factors(1, 1.0, 0.0, 0.5, 0.5)), size)
            .iter()
            .sum();
        let pushed: f32 = plane(&data.render(&factors(1, 1.0, 0.0, 0.2, 0.5)), size)
            .iter()
            .sum();
        assert!(pushed < 0.97 * full, "{pushed} vs {full}");
    }

    #[test]
    fn small_extreme_shapes_leave_the_border_black() {
        let size = 32;
        let data = Shapes::new(size, TRAIN_SEED);
        for shape in 0..3 {
            let img = plane(&data.render(&factors(shape, 0.5, 0.3, 0.25, 0.75)), size);
            for i in 0..size {
                for at in [i, i * size, i * size + size - 1, (size - 1) * size + i] {
                    assert_eq!(img[at], 0.0, "shape {shape} pixel {at}");
                }
            }
        }
    }

    #[test]
    fn edges_are_anti_aliased() {
        let size = 32;
        let data = Shapes::new(size, TRAIN_SEED);
        for shape in 0..3 {
            let img = plane(&data.render(&factors(shape, 0.8, 0.4, 0.5, 0.5)), size);
            let partial = img.iter().filter(|&&v| v > 0.0 && v < 1.0).count();
            let full = img.iter().filter(|&&v| v == 1.0).count();
            assert!(
                partial >= 20 && full >= 20,
                "shape {shape}: {partial} edge, {full} inside"
            );
        }
    }

    #[test]
    fn brightest_pixel_has_the_requested_hue() {
        let size = 32;
        let data = Shapes::new(size, TRAIN_SEED);
        for k in 0..24 {
            let hue = k as f32 / 24.0 + 0.013;
            let f = Factors {
                hue,
                ..factors(k % 3, 0.7, 1.0, 0.4, 0.6)
            };
            let img = data.render(&f);
            let n = size * size;
            let brightest = (0..n)
                .max_by(|&a, &b| {
                    let sum = |i: usize| img[i] + img[n + i] + img[2 * n + i];
                    sum(a).total_cmp(&sum(b))
                })
                .unwrap();
            let (h, s, v) = rgb_to_hsv(img[brightest], img[n + brightest], img[2 * n + brightest]);
            let gap = (h - hue).abs().min(1.0 - (h - hue).abs());
            assert!(gap < 1e-4, "hue {hue} rendered as {h}");
            assert!(
                (s - 1.0).abs() < 1e-5 && (v - 1.0).abs() < 1e-5,
                "s {s} v {v}"
            );
            assert_eq!(&img[..1], &[0.0], "background is black");
        }
    }

    #[test]
    fn covered_area_matches_closed_form() {
        let size = 128;
        let data = Shapes::new(size, TRAIN_SEED);
        for scale in [0.55, 0.9] {
            for rotation in [0.0, 0.37, 2.0] {
                let r = scale * size as f32 * 0.25;
                let side = r * 2f32.sqrt();
                let expected = [side * side, PI * r * r, 3.0 * 3f32.sqrt() / 4.0 * r * r];
                for (shape, want) in expected.iter().enumerate() {
                    let f = factors(shape as u32, scale, rotation, 0.47, 0.55);
                    let area: f32 = plane(&data.render(&f), size).iter().sum();
                    let err = (area - want).abs() / want;
                    assert!(err < 0.03, "{} area {area} vs {want}", f.shape_name());
                }
            }
        }
    }

    #[test]
    fn centre_of_mass_is_at_x_y() {
        let size = 128;
        let data = Shapes::new(size, TRAIN_SEED);
        for shape in 0..3 {
            for (x, y, rotation) in [(0.3, 0.7, 0.2), (0.62, 0.41, 1.3), (0.5, 0.5, 4.0)] {
                let img = plane(&data.render(&factors(shape, 0.75, rotation, x, y)), size);
                let mass: f32 = img.iter().sum();
                let (mut mx, mut my) = (0.0f32, 0.0f32);
                for (i, &v) in img.iter().enumerate() {
                    mx += v * ((i % size) as f32 + 0.5);
                    my += v * ((i / size) as f32 + 0.5);
                }
                let (gx, gy) = (mx / mass / size as f32, my / mass / size as f32);
                assert!(
                    (gx - x).abs() < 1e-3 && (gy - y).abs() < 1e-3,
                    "{shape}: ({gx}, {gy}) vs ({x}, {y})"
                );
            }
        }
    }

    #[test]
    fn rotation_turns_the_square_and_triangle_but_not_the_circle() {
        let size = 32;
        let data = Shapes::new(size, TRAIN_SEED);
        let img = |shape, rotation| data.render(&factors(shape, 0.9, rotation, 0.5, 0.5));
        assert_ne!(img(0, 0.0), img(0, 0.5));
        assert_ne!(img(2, 0.0), img(2, 0.5));
        assert_eq!(img(1, 0.0), img(1, 0.5));
        // The square's 90° symmetry: a quarter turn gives the same picture up to rounding.
        let (a, b) = (img(0, 0.3), img(0, 0.3 + FRAC_PI_2));
        assert!(a.iter().zip(&b).all(|(p, q)| (p - q).abs() < 0.07));
    }

    #[test]
    fn batch_is_the_rendered_images_in_model_range() {
        let size = 16;
        let data = Shapes::new(size, HELDOUT_SEED);
        let (fs, images) = data.batch([3, 9, 4], &candle_core::Device::Cpu).unwrap();
        assert_eq!(images.dims(), &[3, 3, size, size]);
        assert_eq!(fs, vec![data.factors(3), data.factors(9), data.factors(4)]);
        let got: Vec<f32> = images.flatten_all().unwrap().to_vec1().unwrap();
        let want: Vec<f32> = fs
            .iter()
            .flat_map(|f| data.render(f))
            .map(|v| 2.0 * v - 1.0)
            .collect();
        assert_eq!(got, want);
        assert!(got.iter().all(|v| (-1.0..=1.0).contains(v)));
    }

    #[test]
    fn unknown_shape_index_is_named_and_blank() {
        let data = Shapes::new(8, TRAIN_SEED);
        let f = factors(7, 1.0, 0.0, 0.5, 0.5);
        assert_eq!(f.shape_name(), "unknown");
        assert!(data.render(&f).iter().all(|&v| v == 0.0));
    }
}
