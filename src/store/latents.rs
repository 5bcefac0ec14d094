//! Latent rows in memory and their Parquet form: `sample` u32, `step` u16, `t` i32?,
//! `position` i32?, `x` list<f32> whose length is the site's width.
//!
//! design.md asks for a fixed-size list; both pyarrow and polars refuse to read a run's
//! `latents/` as one table when fixed-size widths differ between sites, so `x` is a plain
//! list with a constant length per site (the width is also in the file metadata).

use polars::prelude::*;

use crate::{Error, Result};

/// Rows of one site, column by column. `x` is row-major, `len() * width` values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Latents {
    pub width: usize,
    pub sample: Vec<u32>,
    pub step: Vec<u16>,
    pub t: Vec<Option<i32>>,
    pub position: Vec<Option<i32>>,
    pub x: Vec<f32>,
}

impl Latents {
    pub fn new(width: usize) -> Self {
        Self {
            width,
            ..Self::default()
        }
    }

    /// Room for `rows` rows without reallocating.
    pub fn with_capacity(width: usize, rows: usize) -> Self {
        Self {
            width,
            sample: Vec::with_capacity(rows),
            step: Vec::with_capacity(rows),
            t: Vec::with_capacity(rows),
            position: Vec::with_capacity(rows),
            x: Vec::with_capacity(rows * width),
        }
    }

    pub fn len(&self) -> usize {
        self.sample.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sample.is_empty()
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.x[i * self.width..(i + 1) * self.width]
    }

    pub fn push(
        &mut self,
        sample: u32,
        step: u16,
        t: Option<i32>,
        position: Option<i32>,
        x: &[f32],
    ) {
        debug_assert_eq!(x.len(), self.width);
        self.sample.push(sample);
        self.step.push(step);
        self.t.push(t);
        self.position.push(position);
        self.x.extend_from_slice(x);
    }

    pub fn append(&mut self, other: &Latents) {
        debug_assert_eq!(self.width, other.width);
        self.sample.extend_from_slice(&other.sample);
        self.step.extend_from_slice(&other.step);
        self.t.extend_from_slice(&other.t);
        self.position.extend_from_slice(&other.position);
        self.x.extend_from_slice(&other.x);
    }

    /// Bytes of latent values held.
    pub fn value_bytes(&self) -> usize {
        self.x.len() * std::mem::size_of::<f32>()
    }

    /// Keeps only rows whose step is in `steps`.
    pub fn retain_steps(&mut self, steps: &[u16]) {
        let keep: Vec<bool> = self.step.iter().map(|s| steps.contains(s)).collect();
        if keep.iter().all(|&k| k) {
            return;
        }
        let mut out = Latents::new(self.width);
        for (i, &k) in keep.iter().enumerate() {
            if k {
                out.push(
                    self.sample[i],
                    self.step[i],
                    self.t[i],
                    self.position[i],
                    self.row(i),
                );
            }
        }
        *self = out;
    }

    /// Sorts rows by (sample, step, position), the order readers rely on.
    pub fn sort(&mut self) {
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.sort_by_key(|&i| (self.sample[i], self.step[i], self.position[i]));
        if order.iter().enumerate().all(|(a, &b)| a == b) {
            return;
        }
        let mut out = Latents::new(self.width);
        for i in order {
            out.push(
                self.sample[i],
                self.step[i],
                self.t[i],
                self.position[i],
                self.row(i),
            );
        }
        *self = out;
    }

    pub fn to_frame(&self) -> Result<DataFrame> {
        let n = self.len();
        // polars cannot reshape zero values into lists, but a site that never fired in a
        // chunk (e.g. `thought` at steps without thoughts) still writes a typed, empty part.
        let x = if n == 0 {
            Series::new_empty("x".into(), &DataType::List(Box::new(DataType::Float32)))
        } else {
            Series::new("x".into(), self.x.as_slice()).reshape_list(&[
                ReshapeDimension::new(n as i64),
                ReshapeDimension::new(self.width as i64),
            ])?
        };
        let columns = vec![
            Column::new("sample".into(), self.sample.as_slice()),
            Column::new("step".into(), self.step.as_slice()),
            Column::new("t".into(), self.t.as_slice()),
            Column::new("position".into(), self.position.as_slice()),
            x.into_column(),
        ];
        Ok(DataFrame::new_infer_height(columns)?)
    }

    /// Reads rows back from a frame written by [`Latents::to_frame`]. `what` names the file
    /// in errors.
    pub fn from_frame(df: &DataFrame, what: &str) -> Result<Self> {
        let bad = |detail: String| Error::Invalid(format!("{what}: {detail}"));
        let col = |name: &str| {
            df.column(name)
                .map_err(|_| bad(format!("missing column `{name}`")))
        };
        let sample: Vec<u32> = col("sample")?
            .u32()
            .map_err(|_| bad("column `sample` is not u32".into()))?
            .iter()
            .map(|v| v.ok_or_else(|| bad("null in `sample`".into())))
            .collect::<Result<_>>()?;
        let step: Vec<u16> = col("step")?
            .u16()
            .map_err(|_| bad("column `step` is not u16".into()))?
            .iter()
            .map(|v| v.ok_or_else(|| bad("null in `step`".into())))
            .collect::<Result<_>>()?;
        let t: Vec<Option<i32>> = col("t")?
            .i32()
            .map_err(|_| bad("column `t` is not i32".into()))?
            .iter()
            .collect();
        let position: Vec<Option<i32>> = col("position")?
            .i32()
            .map_err(|_| bad("column `position` is not i32".into()))?
            .iter()
            .collect();
        let (x, width) = list_values(col("x")?, df.height()).map_err(bad)?;
        Ok(Latents {
            width,
            sample,
            step,
            t,
            position,
            x,
        })
    }
}

/// The flat values of a list (or fixed-size list) column whose rows all have one length.
fn list_values(col: &Column, rows: usize) -> std::result::Result<(Vec<f32>, usize), String> {
    let series = col.as_materialized_series();
    let inner = match series.dtype() {
        DataType::List(_) => series
            .list()
            .map_err(|e| e.to_string())?
            .explode(ExplodeOptions {
                empty_as_null: false,
                keep_nulls: false,
            })
            .map_err(|e| e.to_string())?,
        DataType::Array(_, _) => series
            .array()
            .map_err(|e| e.to_string())?
            .explode(ExplodeOptions {
                empty_as_null: false,
                keep_nulls: false,
            })
            .map_err(|e| e.to_string())?,
        other => {
            return Err(format!(
                "column `x` has type {other}, expected a list of f32"
            ))
        }
    };
    let values = inner
        .f32()
        .map_err(|_| format!("column `x` holds {}, expected f32", inner.dtype()))?;
    if values.null_count() > 0 {
        return Err("column `x` has null values".into());
    }
    let flat: Vec<f32> = values.no_null_iter().collect();
    if rows == 0 {
        return Ok((flat, 0));
    }
    if !flat.len().is_multiple_of(rows) {
        return Err(format!(
            "column `x` has {} values over {rows} rows: rows differ in width",
            flat.len()
        ));
    }
    let width = flat.len() / rows;
    Ok((flat, width))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trip_keeps_every_value() {
        let mut l = Latents::new(3);
        l.push(0, 0, Some(981), None, &[1.0, 2.0, 3.0]);
        l.push(0, 1, Some(961), None, &[4.0, 5.0, 6.0]);
        l.push(7, 0, None, Some(2), &[-1.0, f32::MIN_POSITIVE, 9.5]);
        let df = l.to_frame().unwrap();
        assert_eq!(df.height(), 3);
        let back = Latents::from_frame(&df, "test").unwrap();
        assert_eq!(back, l);
    }

    #[test]
    fn a_site_that_never_fired_writes_an_empty_typed_frame() {
        let df = Latents::new(3).to_frame().unwrap();
        assert_eq!(df.height(), 0);
        assert_eq!(
            df.column("x").unwrap().dtype(),
            &DataType::List(Box::new(DataType::Float32))
        );
        assert!(Latents::from_frame(&df, "test").unwrap().is_empty());
    }

    #[test]
    fn sort_orders_by_sample_step_position() {
        let mut l = Latents::new(1);
        l.push(2, 0, None, None, &[3.0]);
        l.push(1, 5, None, None, &[2.0]);
        l.push(1, 1, None, None, &[1.0]);
        l.sort();
        assert_eq!(l.sample, vec![1, 1, 2]);
        assert_eq!(l.x, vec![1.0, 2.0, 3.0]);
    }
}
