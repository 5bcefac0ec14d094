//! `latentlens infoloss`: flags -> `jobs::infoloss` plan -> job -> tables and figures ->
//! findings.

use std::path::PathBuf;
use std::time::Instant;

use super::common;
use crate::jobs::{self, infoloss};
use crate::store::Run;

/// Measure what is lost between recording points: reconstruction (MSE, PSNR, SSIM),
/// linear CKA between sites and steps, and label mutual information.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Examples:
  latentlens infoloss --run reports/demo --labels shape scale
  latentlens infoloss --run reports/demo --sites 'latent,unet.mid_block' --steps 0..50:10 --neighbours 5")]
pub struct InfolossArgs {
    /// Run folder made by `latentlens record`.
    #[arg(long)]
    pub run: PathBuf,
    /// Original image site for reconstruction metrics [default: `image`, when recorded].
    #[arg(long, requires = "to")]
    pub from: Option<String>,
    /// Reconstructed image site [default: `vae.decoder.out`, when recorded].
    #[arg(long, requires = "from")]
    pub to: Option<String>,
    /// Latent site whose width gives the compression ratio numel(from) / numel(latent).
    #[arg(long, default_value = "vae.encoder.mean")]
    pub latent: String,
    /// max - min of the pixel scale of the image sites (2 for the models' [-1, 1]).
    #[arg(long, default_value_t = 2.0)]
    pub data_range: f64,
    /// Sites for CKA and mutual information: names or globs (`unet.*`), comma-separated
    /// or repeated [default: every recorded site].
    #[arg(long, num_args = 1..)]
    pub sites: Vec<String>,
    /// Steps for CKA and mutual information, among the recorded ones: `all`, `last`,
    /// `0,10,49`, `0..50:5` [default: up to 8 evenly spaced steps, first and last
    /// included]. An unrecorded step is an error; sites that fire once per generation use
    /// their single step.
    #[arg(long)]
    pub steps: Option<String>,
    /// Labels for mutual information: columns of samples.parquet or `TABLE:COLUMN`
    /// [default: every samples.parquet column]. Floats are continuous, the rest classes,
    /// as in `probe`.
    #[arg(long, num_args = 1..)]
    pub labels: Vec<String>,
    /// Labels to treat as continuous although their column holds integers.
    #[arg(long, value_delimiter = ',')]
    pub continuous: Vec<String>,
    /// Labels to treat as classes although their column holds floats.
    #[arg(long, value_delimiter = ',')]
    pub classes: Vec<String>,
    /// Seed of the sample subset, the bootstrap and the kNN tie-breaking jitter.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Samples used at most for CKA and mutual information (a seeded subset above that;
    /// the kNN estimator costs O(n²)).
    #[arg(long, default_value_t = 2000)]
    pub max_points: usize,
    /// Principal components of each representation used for mutual information.
    #[arg(long, default_value_t = 8)]
    pub components: usize,
    /// k of the kNN (KSG) estimator; the table records the k used when a class is smaller.
    #[arg(long, default_value_t = 3)]
    pub neighbours: usize,
    /// Reference site of decodability retention: every probe score in
    /// tables/probes.parquet is divided by this site's score for the same label.
    #[arg(long, default_value = "image")]
    pub retention_from: String,
    /// Analyse an unfinished recording (the table metadata says how many samples).
    #[arg(long)]
    pub allow_partial: bool,
}

impl InfolossArgs {
    pub fn options(&self) -> infoloss::Options {
        infoloss::Options {
            from: self.from.clone(),
            to: self.to.clone(),
            latent: self.latent.clone(),
            data_range: self.data_range,
            sites: self.sites.clone(),
            steps: self.steps.clone(),
            labels: self.labels.clone(),
            continuous: self.continuous.clone(),
            classes: self.classes.clone(),
            seed: self.seed,
            max_points: self.max_points,
            components: self.components,
            neighbours: self.neighbours,
            retention_from: self.retention_from.clone(),
            allow_partial: self.allow_partial,
        }
    }
}

pub fn run(args: InfolossArgs) -> anyhow::Result<()> {
    let mut run = Run::open(&args.run)?;
    let plan = infoloss::plan(&run, &args.options())?;
    for note in &plan.notes {
        crate::outln!("note: {note}");
    }
    let started = Instant::now();
    let bar = common::bar(0, "infoloss");
    let out = infoloss::run(&run, &plan, &jobs::Ctx::new(&bar, common::interrupt_flag()))?;
    bar.finish_and_clear();
    let written = jobs::write(&mut run, &plan.identity, out, started)?;
    let record = run
        .manifest()
        .analysis(&plan.identity.key)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("the manifest lost the analysis it just recorded"))?;
    for finding in infoloss::report(&run, &record)?.findings {
        crate::outln!("{finding}");
    }
    for p in written {
        crate::outln!("wrote {}", p.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: InfolossArgs,
    }

    #[test]
    fn flags_parse_and_from_needs_to() {
        use clap::Parser;
        let w = Wrapper::try_parse_from([
            "infoloss",
            "--run",
            "r",
            "--from",
            "image",
            "--to",
            "vae.decoder.out",
            "--sites",
            "latent,unet.*",
            "--sites",
            "x0_pred",
            "--labels",
            "shape",
            "scale",
            "--steps",
            "0..50:5",
            "--seed",
            "3",
            "--max-points",
            "500",
        ])
        .unwrap();
        let a = w.args;
        assert_eq!(a.run, PathBuf::from("r"));
        assert_eq!(
            (a.from.as_deref(), a.to.as_deref()),
            (Some("image"), Some("vae.decoder.out"))
        );
        assert_eq!(common::site_patterns(&a.sites).len(), 3);
        assert_eq!(a.labels, vec!["shape", "scale"]);
        assert_eq!(
            (a.seed, a.max_points, a.components, a.neighbours),
            (3, 500, 8, 3)
        );
        assert_eq!(a.data_range, 2.0);
        assert_eq!(a.options().steps.as_deref(), Some("0..50:5"));
        assert!(Wrapper::try_parse_from(["infoloss", "--run", "r", "--from", "image"]).is_err());
        assert!(Wrapper::try_parse_from(["infoloss"]).is_err());
    }
}
