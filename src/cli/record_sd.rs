//! `latentlens record sd` and `latentlens sites sd`: run prompts through a local Stable
//! Diffusion 1.x / 2.x folder (diffusers layout) and record its sites at every step, into
//! the same run folder as the built-in model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::{Device, Tensor};
use clap::Args;
use polars::prelude::*;

use super::common;
use crate::record::{bytes_per_sample, chunk_samples_for, record, RecordPlan};
use crate::sd::{Generation, SchedulerKind, SdOptions, StableDiffusion};
use crate::sites::{select_sites, Hooks};
use crate::store::{manifest::hash_file, Manifest, ModelInfo, Run, Start};
use crate::taps::Pool;

const CHUNK_BUDGET_BYTES: u64 = 256 << 20;
const MAX_CHUNK_SAMPLES: u32 = 64;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  latentlens record sd --model-dir ~/models/sd-1.5 --prompts prompts.txt --run reports/sd
  latentlens record sd --model-dir DIR --prompts prompts.csv --sites unet.mid_block --keep-steps 0..50:10")]
pub struct RecordSd {
    /// Run folder to create (or resume, if it holds this same run unfinished).
    #[arg(long, default_value = "reports/sd")]
    pub run: PathBuf,
    /// A local diffusers Stable Diffusion 1.x / 2.x folder (model_index.json, unet/, vae/,
    /// text_encoder/, tokenizer/, scheduler/). Nothing is downloaded.
    #[arg(long)]
    pub model_dir: PathBuf,
    /// Prompts: a text file (one prompt per line), JSONL (objects with `prompt`) or CSV (a
    /// `prompt` column). Other fields / columns become labels in samples.parquet; an optional
    /// `negative_prompt` field / column sets that sample's negative prompt. Optional with
    /// --prompt-embeds.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Denoising steps (diffusers' num_inference_steps).
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Steps to keep for per-step sites: `all`, `last`, `0,10,49`, `0..50:5`.
    #[arg(long, default_value = "all")]
    pub keep_steps: String,
    /// Sites to record: names or globs (`unet.*`, `*.attn2`), comma-separated or repeated.
    #[arg(long, default_value = "*")]
    pub sites: Vec<String>,
    /// `none`: whole tensors (token sites: one row per token); `mean`: channel vectors
    /// averaged over space (token sites: averaged over tokens).
    #[arg(long, value_enum, default_value_t = Pool::None)]
    pub pool: Pool,
    /// Classifier-free guidance scale; 1 or less runs no unconditional pass.
    #[arg(long, default_value_t = 7.5)]
    pub guidance: f64,
    /// Negative prompt for every sample without its own (default: the empty prompt).
    #[arg(long)]
    pub negative_prompt: Option<String>,
    /// Sampler. Default: the folder's scheduler_config.json class (PNDM and LMS configs run
    /// as DDIM).
    #[arg(long, value_enum)]
    pub scheduler: Option<SchedulerKind>,
    /// DDIM's eta (0 = deterministic).
    #[arg(long, default_value_t = 0.0)]
    pub eta: f64,
    /// Seed: sample i's noise comes from (seed, i), whatever the batch.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Image height in pixels (default: the UNet's sample_size x the VAE's factor).
    #[arg(long)]
    pub height: Option<usize>,
    /// Image width in pixels (default as --height).
    #[arg(long)]
    pub width: Option<usize>,
    /// Initial latents (safetensors, tensor `latents` [N, C, h, w]; row i for sample i),
    /// as diffusers' `latents=`: scaled by the sampler's init_noise_sigma.
    #[arg(long)]
    pub latents: Option<PathBuf>,
    /// Prompt embeddings (safetensors: `prompt_embeds` [N, L, D], optional
    /// `negative_prompt_embeds`), as diffusers' `prompt_embeds=`; the text encoder then does
    /// not run for the prompts and its sites do not fire.
    #[arg(long)]
    pub prompt_embeds: Option<PathBuf>,
    /// Samples per forward pass.
    #[arg(long, default_value_t = 1)]
    pub batch_size: u32,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  latentlens sites sd --model-dir ~/models/sd-1.5")]
pub struct SitesSd {
    /// A local diffusers Stable Diffusion folder.
    #[arg(long)]
    pub model_dir: PathBuf,
    /// Image height in pixels (default: the model's).
    #[arg(long)]
    pub height: Option<usize>,
    /// Image width in pixels (default: the model's).
    #[arg(long)]
    pub width: Option<usize>,
}

pub fn run_sites(args: &SitesSd) -> anyhow::Result<()> {
    let sd = StableDiffusion::load(&args.model_dir, &common::device()?)?;
    let (h0, w0) = sd.default_size();
    let (h, w) = (args.height.unwrap_or(h0), args.width.unwrap_or(w0));
    crate::outln!("{:<44} {:<10} shape (per sample)", "site", "fires");
    for site in sd.sites(h, w, false)? {
        let fires = if site.per_step { "each step" } else { "once" };
        crate::outln!("{:<44} {:<10} {}", site.name, fires, site.shape_string());
    }
    Ok(())
}

/// One sample's inputs from the prompts file.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptRow {
    pub prompt: String,
    pub negative: Option<String>,
    pub labels: BTreeMap<String, Label>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Label {
    Int(i64),
    Float(f64),
    Bool(bool),
    Text(String),
}

/// Reads a prompts file: `.jsonl`, `.csv`, or plain text (one prompt per line). Every row
/// must have the same label columns; an empty prompt line is an error.
pub fn read_prompts(path: &Path) -> anyhow::Result<Vec<PromptRow>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let rows = match ext.as_str() {
        "jsonl" | "ndjson" => read_jsonl(&text),
        "csv" => read_csv(&text),
        _ => read_lines(&text),
    }
    .with_context(|| format!("prompts file {}", path.display()))?;
    anyhow::ensure!(
        !rows.is_empty(),
        "prompts file {} has no prompts",
        path.display()
    );
    Ok(rows)
}

fn read_lines(text: &str) -> anyhow::Result<Vec<PromptRow>> {
    let lines: Vec<&str> = text.trim_end_matches(['\n', '\r']).lines().collect();
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            anyhow::ensure!(
                !l.trim().is_empty(),
                "line {} is empty: give one prompt per line (use JSONL or CSV for an empty prompt)",
                i + 1
            );
            Ok(PromptRow {
                prompt: l.trim_end_matches('\r').to_string(),
                negative: None,
                labels: BTreeMap::new(),
            })
        })
        .collect()
}

fn read_jsonl(text: &str) -> anyhow::Result<Vec<PromptRow>> {
    let mut rows: Vec<PromptRow> = Vec::new();
    for (i, line) in text.trim_end_matches(['\n', '\r']).lines().enumerate() {
        let n = i + 1;
        anyhow::ensure!(!line.trim().is_empty(), "line {n} is empty");
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("line {n} is not JSON"))?;
        let obj = v
            .as_object()
            .with_context(|| format!("line {n} is not a JSON object"))?;
        let prompt = obj
            .get("prompt")
            .and_then(|p| p.as_str())
            .with_context(|| format!("line {n} has no string field `prompt`"))?;
        let negative = match obj.get("negative_prompt") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(other) => anyhow::bail!("line {n}: `negative_prompt` = {other} is not a string"),
        };
        let mut labels = BTreeMap::new();
        for (k, v) in obj {
            if k == "prompt" || k == "negative_prompt" {
                continue;
            }
            let label = match v {
                serde_json::Value::Number(x) => match x.as_i64() {
                    Some(i) => Label::Int(i),
                    None => Label::Float(x.as_f64().unwrap_or(f64::NAN)),
                },
                serde_json::Value::Bool(b) => Label::Bool(*b),
                serde_json::Value::String(s) => Label::Text(s.clone()),
                other => anyhow::bail!(
                    "line {n}: label `{k}` = {other} is not a number, string or boolean"
                ),
            };
            labels.insert(k.clone(), label);
        }
        rows.push(PromptRow {
            prompt: prompt.to_string(),
            negative,
            labels,
        });
    }
    check_same_columns(&rows)?;
    Ok(rows)
}

/// RFC 4180 fields: commas, double quotes with "" escapes, quoted newlines.
fn csv_records(text: &str) -> anyhow::Result<Vec<Vec<String>>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => {
                if c == '\n' {
                    line += 1;
                }
                field.push(c)
            }
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
                line += 1;
            }
            (false, c) => field.push(c),
        }
    }
    anyhow::ensure!(!quoted, "an unclosed quote (from line {line} on)");
    if !field.is_empty() || !record.is_empty() {
        record.push(field);
        records.push(record);
    }
    Ok(records)
}

fn read_csv(text: &str) -> anyhow::Result<Vec<PromptRow>> {
    let records = csv_records(text)?;
    let (header, body) = records.split_first().context("the CSV file is empty")?;
    let prompt_col = header
        .iter()
        .position(|h| h == "prompt")
        .with_context(|| format!("the CSV header {header:?} has no `prompt` column"))?;
    let negative_col = header.iter().position(|h| h == "negative_prompt");
    for (i, r) in body.iter().enumerate() {
        anyhow::ensure!(
            r.len() == header.len(),
            "row {} has {} fields but the header has {} columns (a missing label?)",
            i + 2,
            r.len(),
            header.len()
        );
    }
    let label_cols: Vec<usize> = (0..header.len())
        .filter(|&c| c != prompt_col && Some(c) != negative_col)
        .collect();
    // A column is integer, float or boolean when every value parses as one.
    let kind = |c: usize| {
        let vals = body.iter().map(|r| r[c].trim());
        if vals.clone().all(|v| v.parse::<i64>().is_ok()) {
            0
        } else if vals.clone().all(|v| v.parse::<f64>().is_ok()) {
            1
        } else if vals.clone().all(|v| v == "true" || v == "false") {
            2
        } else {
            3
        }
    };
    let kinds: Vec<u8> = label_cols.iter().map(|&c| kind(c)).collect();
    Ok(body
        .iter()
        .map(|r| PromptRow {
            prompt: r[prompt_col].clone(),
            negative: negative_col.map(|c| r[c].clone()),
            labels: label_cols
                .iter()
                .zip(&kinds)
                .map(|(&c, &k)| {
                    let v = r[c].trim();
                    let label = match k {
                        0 => Label::Int(v.parse().unwrap_or_default()),
                        1 => Label::Float(v.parse().unwrap_or(f64::NAN)),
                        2 => Label::Bool(v == "true"),
                        _ => Label::Text(r[c].clone()),
                    };
                    (header[c].clone(), label)
                })
                .collect(),
        })
        .collect())
}

fn check_same_columns(rows: &[PromptRow]) -> anyhow::Result<()> {
    let Some(first) = rows.first() else {
        return Ok(());
    };
    let want: Vec<&String> = first.labels.keys().collect();
    for (i, r) in rows.iter().enumerate() {
        let have: Vec<&String> = r.labels.keys().collect();
        if have != want {
            let missing: Vec<&&String> = want.iter().filter(|k| !have.contains(k)).collect();
            let extra: Vec<&&String> = have.iter().filter(|k| !want.contains(k)).collect();
            anyhow::bail!(
                "line {} has label columns {have:?} but line 1 has {want:?} (missing {missing:?}, extra {extra:?}): every line needs the same labels",
                i + 1
            );
        }
        let kinds_differ = r
            .labels
            .iter()
            .zip(first.labels.values())
            .any(|((_, a), b)| {
                std::mem::discriminant(a) != std::mem::discriminant(b)
                    && !matches!(
                        (a, b),
                        (Label::Int(_), Label::Float(_)) | (Label::Float(_), Label::Int(_))
                    )
            });
        anyhow::ensure!(
            !kinds_differ,
            "line {}: a label has another type than on line 1",
            i + 1
        );
    }
    Ok(())
}

/// The samples' label table: `sample`, `prompt`, `negative_prompt`, `seed`, then labels.
fn label_frame(
    ids: &[u32],
    rows: &[&PromptRow],
    negatives: &[String],
    seeds: &[u64],
) -> crate::Result<DataFrame> {
    let mut cols = vec![
        Column::new("sample".into(), ids),
        Column::new(
            "prompt".into(),
            rows.iter().map(|r| r.prompt.as_str()).collect::<Vec<_>>(),
        ),
        Column::new(
            "negative_prompt".into(),
            negatives.iter().map(String::as_str).collect::<Vec<_>>(),
        ),
        Column::new("seed".into(), seeds),
    ];
    if let Some(first) = rows.first() {
        for (name, v) in &first.labels {
            let col = match v {
                Label::Int(_) | Label::Float(_)
                    if rows
                        .iter()
                        .any(|r| matches!(r.labels.get(name), Some(Label::Float(_)))) =>
                {
                    let v: Vec<f64> = rows
                        .iter()
                        .map(|r| match r.labels.get(name) {
                            Some(Label::Int(i)) => *i as f64,
                            Some(Label::Float(f)) => *f,
                            _ => f64::NAN,
                        })
                        .collect();
                    Column::new(name.as_str().into(), v)
                }
                Label::Int(_) => Column::new(
                    name.as_str().into(),
                    rows.iter()
                        .map(|r| match r.labels.get(name) {
                            Some(Label::Int(i)) => *i,
                            _ => 0,
                        })
                        .collect::<Vec<i64>>(),
                ),
                Label::Float(_) => unreachable!("handled above"),
                Label::Bool(_) => Column::new(
                    name.as_str().into(),
                    rows.iter()
                        .map(|r| matches!(r.labels.get(name), Some(Label::Bool(true))))
                        .collect::<Vec<bool>>(),
                ),
                Label::Text(_) => Column::new(
                    name.as_str().into(),
                    rows.iter()
                        .map(|r| match r.labels.get(name) {
                            Some(Label::Text(s)) => s.clone(),
                            _ => String::new(),
                        })
                        .collect::<Vec<String>>(),
                ),
            };
            cols.push(col);
        }
    }
    Ok(DataFrame::new_infer_height(cols)?)
}

fn read_tensor(path: &Path, name: &str, device: &Device) -> anyhow::Result<Option<Tensor>> {
    let tensors = candle_core::safetensors::load(path, device)
        .with_context(|| format!("{} is not a readable safetensors file", path.display()))?;
    Ok(tensors
        .get(name)
        .map(|t| t.to_dtype(candle_core::DType::F32))
        .transpose()?)
}

/// The checked inputs of a recording.
struct Inputs {
    rows: Vec<PromptRow>,
    latents: Option<Tensor>,
    embeds: Option<(Tensor, Option<Tensor>)>,
    height: usize,
    width: usize,
}

fn resolve_inputs(args: &RecordSd, sd: &StableDiffusion) -> anyhow::Result<Inputs> {
    let embeds = match &args.prompt_embeds {
        Some(p) => {
            let cond = read_tensor(p, "prompt_embeds", &sd.device)?
                .with_context(|| format!("{} has no tensor `prompt_embeds`", p.display()))?;
            let uncond = read_tensor(p, "negative_prompt_embeds", &sd.device)?;
            let want = (sd.prompt_length(), sd.text_encoder.config.hidden_size);
            let (_, l, d) = cond
                .dims3()
                .context("prompt_embeds must be [N, tokens, hidden]")?;
            anyhow::ensure!(
                (l, d) == want,
                "{}: prompt_embeds is [N, {l}, {d}] but this model takes [N, {}, {}]",
                p.display(),
                want.0,
                want.1
            );
            if let Some(u) = &uncond {
                anyhow::ensure!(
                    u.dims() == cond.dims(),
                    "negative_prompt_embeds {:?} must match prompt_embeds {:?}",
                    u.dims(),
                    cond.dims()
                );
            }
            Some((cond, uncond))
        }
        None => None,
    };
    let rows = match (&args.prompts, &embeds) {
        (Some(p), _) => read_prompts(p)?,
        (None, Some((cond, _))) => (0..cond.dim(0)?)
            .map(|_| PromptRow {
                prompt: String::new(),
                negative: None,
                labels: BTreeMap::new(),
            })
            .collect(),
        (None, None) => anyhow::bail!("give --prompts FILE (or --prompt-embeds FILE)"),
    };
    if let Some((cond, _)) = &embeds {
        anyhow::ensure!(
            cond.dim(0)? >= rows.len(),
            "--prompt-embeds has {} rows for {} prompts",
            cond.dim(0)?,
            rows.len()
        );
    }
    let latents = match &args.latents {
        Some(p) => Some(
            read_tensor(p, "latents", &sd.device)?
                .with_context(|| format!("{} has no tensor `latents`", p.display()))?,
        ),
        None => None,
    };
    let (h0, w0) = sd.default_size();
    let (mut height, mut width) = (args.height.unwrap_or(h0), args.width.unwrap_or(w0));
    if let Some(l) = &latents {
        let (n, c, h, w) = l.dims4().context("--latents must be [N, C, h, w]")?;
        anyhow::ensure!(
            n >= rows.len(),
            "--latents has {n} rows for {} prompts",
            rows.len()
        );
        anyhow::ensure!(
            c == sd.vae.config.latent_channels,
            "--latents has {c} channels; the model's latents have {}",
            sd.vae.config.latent_channels
        );
        let (lh, lw) = (h * sd.vae_scale(), w * sd.vae_scale());
        anyhow::ensure!(
            args.height.is_none_or(|x| x == lh) && args.width.is_none_or(|x| x == lw),
            "--latents are for {lh}x{lw} images, not --height/--width"
        );
        (height, width) = (lh, lw);
    }
    sd.latent_dims(height, width)?;
    Ok(Inputs {
        rows,
        latents,
        embeds,
        height,
        width,
    })
}

pub fn run(args: &RecordSd) -> anyhow::Result<()> {
    let device = common::device()?;
    let sd = StableDiffusion::load(&args.model_dir, &device)?;
    anyhow::ensure!(args.steps > 0, "--steps must be at least 1");
    let kind = match args.scheduler {
        Some(k) => k,
        None => sd.scheduler.default_kind().with_context(|| {
            format!(
                "the folder's scheduler is {}, which latentlens does not implement; pick one with --scheduler",
                sd.scheduler.class_name
            )
        })?,
    };
    // Checks the sampler against the config (and the step count) before any work.
    crate::sd::Schedule::new(&sd.scheduler, kind, args.steps)?;
    let inputs = resolve_inputs(args, &sd)?;
    let mut all_sites = sd.sites(inputs.height, inputs.width, false)?;
    if inputs.embeds.is_some() {
        let patterns = common::site_patterns(&args.sites);
        if let Some(p) = patterns
            .iter()
            .find(|p| p.as_str().starts_with("text_encoder"))
        {
            anyhow::bail!(
                "--sites {}: the text encoder does not run with --prompt-embeds",
                p.as_str()
            );
        }
        all_sites.retain(|s| !s.name.starts_with("text_encoder"));
    }
    let sites = select_sites(&common::site_patterns(&args.sites), &all_sites)?;
    let total = u16::try_from(args.steps).context("--steps is too large")?;
    let steps = crate::steps::parse_steps(&args.keep_steps, 0, total)?;
    let steps_kept = steps.as_ref().map_or(args.steps, Vec::len);
    let per_sample = bytes_per_sample(&sites, args.pool, steps_kept);
    let chunk_samples = chunk_samples_for(per_sample, CHUNK_BUDGET_BYTES, MAX_CHUNK_SAMPLES);
    let options = SdOptions {
        steps: args.steps,
        guidance: args.guidance,
        scheduler: kind,
        eta: args.eta,
    };
    let samples = inputs.rows.len() as u32;
    let config = serde_json::json!({
        "model_dir": args.model_dir,
        "prompts": args.prompts,
        "samples": samples,
        "sites": sites.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        "steps": args.steps,
        "keep_steps": steps,
        "pool": args.pool,
        "guidance": args.guidance,
        "negative_prompt": args.negative_prompt,
        "scheduler": kind,
        "scheduler_config": sd.scheduler,
        "eta": args.eta,
        "height": inputs.height,
        "width": inputs.width,
        "latents": args.latents,
        "prompt_embeds": args.prompt_embeds,
        "chunk_samples": chunk_samples,
    });
    let plan = RecordPlan {
        sites,
        steps,
        pool: args.pool,
        samples,
        chunk_samples,
        batch_size: args.batch_size.max(1).min(chunk_samples),
    };

    let mut files = sd.files.clone();
    files.extend(args.prompts.iter().cloned());
    files.extend(args.latents.iter().cloned());
    files.extend(args.prompt_embeds.iter().cloned());
    let weights = files
        .iter()
        .map(|p| hash_file(p))
        .collect::<crate::Result<Vec<_>>>()?;
    let manifest = Manifest::new(
        "record sd",
        config,
        args.seed,
        ModelInfo {
            id: format!("stable-diffusion ({})", args.model_dir.display()),
            weights,
        },
    );
    let (mut run, start) = Run::create_or_resume(&args.run, manifest)?;
    if start == Start::Resumed {
        eprintln!("resuming the run in {}", args.run.display());
    }
    let bar = common::bar(samples as u64, "recording");
    let mut forward = |ids: &[u32], hooks: &mut Hooks| -> crate::Result<DataFrame> {
        forward_batch(&sd, args, &inputs, &options, ids, hooks)
    };
    let summary = record(
        &mut run,
        &plan,
        &mut forward,
        &bar,
        common::interrupt_flag(),
    )?;
    bar.finish_and_clear();
    crate::outln!(
        "recorded {samples} samples, {} rows ({:.1} MB of latents) in {:.1} s to {}",
        summary.rows,
        summary.bytes as f64 / 1e6,
        summary.seconds,
        args.run.display()
    );
    Ok(())
}

fn forward_batch(
    sd: &StableDiffusion,
    args: &RecordSd,
    inputs: &Inputs,
    options: &SdOptions,
    ids: &[u32],
    hooks: &mut Hooks,
) -> crate::Result<DataFrame> {
    let seeds: Vec<u64> = ids
        .iter()
        .map(|&i| crate::rng::mix(&[args.seed, i as u64]))
        .collect();
    let rows: Vec<&PromptRow> = ids.iter().map(|&i| &inputs.rows[i as usize]).collect();
    let default_negative = args.negative_prompt.clone().unwrap_or_default();
    let negatives: Vec<String> = rows
        .iter()
        .map(|r| {
            r.negative
                .clone()
                .unwrap_or_else(|| default_negative.clone())
        })
        .collect();
    let prompts: Vec<&str> = rows.iter().map(|r| r.prompt.as_str()).collect();
    let negs: Vec<&str> = negatives.iter().map(String::as_str).collect();
    let pick = |t: &Tensor| -> crate::Result<Tensor> {
        let idx = Tensor::from_vec(ids.to_vec(), ids.len(), t.device())?;
        Ok(t.index_select(&idx, 0)?)
    };
    let (cond, uncond) = match &inputs.embeds {
        Some((cond, uncond)) => {
            let cond = pick(cond)?;
            let uncond = match (uncond, options.guided()) {
                (Some(u), true) => Some(pick(u)?),
                // diffusers encodes the negative (or empty) prompts when only prompt_embeds is
                // given; the text encoder's sites stay silent (its prompts were not run).
                (None, true) => Some(sd.encode_prompts(&negs, &mut Hooks::none())?),
                (_, false) => None,
            };
            (cond, uncond)
        }
        None if options.guided() => {
            let (c, u) = sd.encode_guided(&prompts, &negs, hooks)?;
            (c, Some(u))
        }
        None => (sd.encode_prompts(&prompts, hooks)?, None),
    };
    let dims = sd.latent_dims(inputs.height, inputs.width)?;
    let latents = match &inputs.latents {
        Some(l) => pick(l)?,
        None => sd.noise(&seeds, 0, dims)?,
    };
    let g = Generation {
        cond,
        uncond,
        latents,
        seeds: &seeds,
    };
    sd.generate(&g, options, hooks)?;
    label_frame(ids, &rows, &negatives, &seeds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_files_read_as_text_jsonl_and_csv_with_labels() {
        let rows = read_lines("a cat\na dog\n").unwrap();
        assert_eq!(rows.len(), 2);
        assert!(read_lines("a cat\n\na dog")
            .unwrap_err()
            .to_string()
            .contains("line 2 is empty"));

        let rows = read_jsonl("{\"prompt\": \"a cat\", \"animal\": \"cat\", \"n\": 1}\n{\"prompt\": \"two dogs\", \"animal\": \"dog\", \"n\": 2, \"negative_prompt\": \"blurry\"}\n").unwrap();
        assert_eq!(rows[1].negative.as_deref(), Some("blurry"));
        assert_eq!(rows[0].labels["n"], Label::Int(1));
        let err = read_jsonl("{\"prompt\": \"a\", \"animal\": \"cat\"}\n{\"prompt\": \"b\"}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2") && err.contains("animal"), "{err}");

        let rows =
            read_csv("prompt,animal,size\n\"a cat, small\",cat,0.5\n\"say \"\"hi\"\"\",dog,2\n")
                .unwrap();
        assert_eq!(rows[0].prompt, "a cat, small");
        assert_eq!(rows[1].prompt, "say \"hi\"");
        assert_eq!(rows[1].labels["size"], Label::Float(2.0));
        let err = read_csv("prompt,animal\na cat\n").unwrap_err().to_string();
        assert!(err.contains("row 2") && err.contains("missing"), "{err}");
        let err = read_csv("text,animal\na,b\n").unwrap_err().to_string();
        assert!(err.contains("no `prompt` column"), "{err}");

        let df = label_frame(
            &[0, 1],
            &rows.iter().collect::<Vec<_>>(),
            &["".into(), "".into()],
            &[1, 2],
        )
        .unwrap();
        assert_eq!(
            df.get_column_names()
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>(),
            vec![
                "sample",
                "prompt",
                "negative_prompt",
                "seed",
                "animal",
                "size"
            ]
        );
        assert!(df.column("size").unwrap().dtype().is_float());
    }
}
