//! Run folders (design.md "Run folder"): the only code that reads or writes them.
//!
//! ```text
//! manifest.json  samples.parquet  latents/site=<name>/part-*.parquet  tables/  plots/
//! ```
//! Every file is written under a temporary name and renamed into place, so a reader (or an
//! interrupted run) only ever sees whole files.

pub mod latents;
pub mod lock;
pub mod manifest;
pub mod resolve;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use polars::prelude::*;

pub use latents::Latents;
pub use lock::{lock_folder, FolderLock, LOCK_FILE};
pub use manifest::{
    AnalysisRecord, Manifest, ModelInfo, SiteDim, SiteRecord, WeightFile, STATUS_COMPLETE,
    STATUS_RUNNING,
};

use crate::error::{IoContext, Result};
use crate::Error;

const MANIFEST: &str = "manifest.json";
const SAMPLES: &str = "samples.parquet";
const TMP_SUFFIX: &str = ".tmp";
const MANIFEST_TMP: &str = "manifest.json.tmp";

/// An open run folder.
#[derive(Debug, Clone)]
pub struct Run {
    root: PathBuf,
    manifest: Manifest,
    /// The folder's writer lock, taken by the first write (or [`Run::lock`]) and held
    /// until the last clone of this run is dropped.
    lock: OnceLock<Arc<FolderLock>>,
}

/// Whether [`Run::create_or_resume`] started a new run or picked up an earlier one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    New,
    /// An unfinished run of the same identity: its finished parts are kept.
    Resumed,
    /// The same run, already complete: nothing is to be recorded and the folder, manifest
    /// included, is left as it was.
    Complete,
}

impl Run {
    /// Whether `dir` holds a run (its manifest), for commands that open or create one.
    pub fn is_run(dir: &Path) -> bool {
        dir.join(MANIFEST).is_file()
    }

    /// Opens an existing run folder for reading; the first write takes its lock.
    pub fn open(dir: &Path) -> Result<Run> {
        let path = dir.join(MANIFEST);
        if !path.is_file() {
            return Err(Error::BadFile {
                path: dir.to_path_buf(),
                detail: "not a run folder (no manifest.json); record one with `latentlens record`"
                    .into(),
            });
        }
        let manifest = read_manifest(&path)?;
        Ok(Run {
            root: dir.to_path_buf(),
            manifest,
            lock: OnceLock::new(),
        })
    }

    /// Starts the run described by `manifest` in `dir`, or resumes it if `dir` holds the
    /// same run unfinished, or opens it untouched if that run is complete. A folder that
    /// holds anything else is refused, so no earlier result is ever overwritten. The
    /// folder's lock is taken before anything is looked at: a second writer is refused
    /// before it computes anything.
    pub fn create_or_resume(dir: &Path, manifest: Manifest) -> Result<(Run, Start)> {
        let created = !dir.exists();
        fs::create_dir_all(dir).at(dir)?;
        let lock = lock_folder(dir)?;
        let start = if dir.join(MANIFEST).is_file() {
            let existing = read_manifest(&dir.join(MANIFEST))?;
            if !existing.same_run(&manifest) {
                let unfinished = if existing.status == STATUS_COMPLETE {
                    ""
                } else {
                    "an unfinished run "
                };
                return Err(Error::RunExists {
                    path: dir.to_path_buf(),
                    detail: format!("{unfinished}made by `{}`", existing.command.join(" ")),
                });
            }
            if existing.status == STATUS_COMPLETE {
                let run = Run {
                    root: dir.to_path_buf(),
                    manifest: existing,
                    lock: OnceLock::from(lock),
                };
                return Ok((run, Start::Complete));
            }
            Start::Resumed
        } else {
            let foreign = fs::read_dir(dir)
                .at(dir)?
                .filter_map(|e| e.ok())
                // Ours: the lock, and the manifest of a start killed while writing it.
                .any(|e| e.file_name() != LOCK_FILE && e.file_name() != MANIFEST_TMP);
            if foreign {
                return Err(Error::RunExists {
                    path: dir.to_path_buf(),
                    detail: "a non-empty folder without manifest.json".into(),
                });
            }
            Start::New
        };
        let run = Run {
            root: dir.to_path_buf(),
            manifest,
            lock: OnceLock::from(lock),
        };
        let written = run.remove_temporaries().and_then(|()| run.write_manifest());
        if let Err(e) = written {
            if created {
                drop(run);
                let _ = fs::remove_dir_all(dir);
            }
            return Err(e);
        }
        Ok((run, start))
    }

    /// Takes the folder's writer lock now (writes take it anyway): a command that will
    /// write calls this before its work, so a second writer is refused at once.
    pub fn lock(&self) -> Result<()> {
        if self.lock.get().is_none() {
            let lock = lock_folder(&self.root)?;
            let _ = self.lock.set(lock);
        }
        Ok(())
    }

    /// Removes a run that a failed start left with no finished part (its manifest, empty
    /// folders, and the folder itself when nothing else is in it), so the corrected
    /// command starts afresh. A run with finished parts is kept for resuming.
    pub fn abandon_if_empty(self) -> Result<bool> {
        let has_parts = |dir: &Path| -> bool {
            walk_files(dir)
                .iter()
                .any(|p| p.extension().is_some_and(|e| e == "parquet"))
        };
        if has_parts(&self.root.join("latents"))
            || has_parts(&self.root.join(".samples"))
            || self.root.join(SAMPLES).exists()
            || !self.manifest.analyses.is_empty()
        {
            return Ok(false);
        }
        self.remove_temporaries()?;
        for sub in ["latents", ".samples"] {
            let dir = self.root.join(sub);
            if dir.is_dir() {
                fs::remove_dir_all(&dir).at(&dir)?;
            }
        }
        let manifest = self.root.join(MANIFEST);
        fs::remove_file(&manifest).at(&manifest)?;
        let root = self.root.clone();
        drop(self);
        // Only succeeds when nothing else is in the folder (and no clone holds the lock).
        let _ = fs::remove_dir(&root);
        Ok(true)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn manifest_mut(&mut self) -> &mut Manifest {
        &mut self.manifest
    }

    pub fn write_manifest(&self) -> Result<()> {
        self.lock()?;
        let json = serde_json::to_vec_pretty(&self.manifest)?;
        write_atomic(&self.root.join(MANIFEST), |f| f.write_all(&json))
    }

    fn site_dir(&self, site: &str) -> PathBuf {
        self.root.join("latents").join(format!("site={site}"))
    }

    fn part_path(&self, site: &str, part: u32) -> PathBuf {
        self.site_dir(site).join(format!("part-{part:05}.parquet"))
    }

    fn samples_part_path(&self, part: u32) -> PathBuf {
        self.root
            .join(".samples")
            .join(format!("part-{part:05}.parquet"))
    }

    /// Whether part `part` of every listed site and of the sample labels is on disk.
    pub fn part_done(&self, sites: &[&str], part: u32) -> bool {
        self.samples_part_path(part).is_file()
            && sites.iter().all(|s| self.part_path(s, part).is_file())
    }

    /// Writes one part of a site's latents. Parts are numbered by chunk of samples, so a
    /// resumed run rewrites exactly the parts it lacks.
    pub fn write_latents_part(&self, site: &str, part: u32, rows: &Latents) -> Result<PathBuf> {
        self.lock()?;
        let path = self.part_path(site, part);
        let mut df = rows.to_frame()?;
        let mut meta = self.manifest.provenance();
        meta.push(("latentlens.site".into(), site.to_string()));
        meta.push(("latentlens.width".into(), rows.width.to_string()));
        write_parquet(&path, &mut df, meta)?;
        Ok(path)
    }

    /// Writes the sample labels of one chunk; [`Run::finish_samples`] joins them.
    pub fn write_samples_part(&self, part: u32, df: &mut DataFrame) -> Result<()> {
        self.lock()?;
        write_parquet(
            &self.samples_part_path(part),
            df,
            self.manifest.provenance(),
        )
    }

    /// Concatenates the per-chunk sample labels into samples.parquet.
    pub fn finish_samples(&self, parts: u32) -> Result<u64> {
        self.lock()?;
        let mut all: Option<DataFrame> = None;
        for part in 0..parts {
            let df = read_parquet(&self.samples_part_path(part))?;
            match all.as_mut() {
                None => all = Some(df),
                Some(acc) => {
                    acc.vstack_mut(&df)?;
                }
            }
        }
        let mut df = all.unwrap_or_default();
        df.rechunk_mut();
        let rows = df.height() as u64;
        write_parquet(
            &self.root.join(SAMPLES),
            &mut df,
            self.manifest.provenance(),
        )?;
        let dir = self.root.join(".samples");
        fs::remove_dir_all(&dir).at(&dir)?;
        Ok(rows)
    }

    /// Site names that have a `latents/site=<name>/` folder, sorted.
    pub fn sites(&self) -> Result<Vec<String>> {
        let dir = self.root.join("latents");
        if !dir.is_dir() {
            return Ok(Vec::new());
        }
        let mut names = Vec::new();
        for entry in fs::read_dir(&dir).at(&dir)? {
            let entry = entry.at(&dir)?;
            if let Some(name) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("site="))
            {
                names.push(name.to_string());
            }
        }
        names.sort();
        Ok(names)
    }

    fn parts(&self, site: &str) -> Result<Vec<PathBuf>> {
        let dir = self.site_dir(site);
        if !dir.is_dir() {
            return Err(Error::UnknownSite {
                name: site.to_string(),
                valid: self.sites()?,
            });
        }
        let mut parts: Vec<PathBuf> = fs::read_dir(&dir)
            .at(&dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
            .collect();
        parts.sort();
        Ok(parts)
    }

    /// Streams a site part by part, each batch holding about `batch_rows` rows or one
    /// whole part, whichever is larger: memory stays bounded by the part size.
    pub fn scan_latents(
        &self,
        site: &str,
        steps: Option<&[u16]>,
        batch_rows: usize,
        f: &mut dyn FnMut(&Latents) -> Result<()>,
    ) -> Result<()> {
        let mut pending: Option<Latents> = None;
        for path in self.parts(site)? {
            let df = read_parquet(&path)?;
            let mut rows = Latents::from_frame(&df, &path.display().to_string())?;
            if let Some(steps) = steps {
                rows.retain_steps(steps);
            }
            match pending.as_mut() {
                Some(acc) if acc.width == rows.width || rows.is_empty() => acc.append(&rows),
                Some(acc) => {
                    return Err(Error::BadFile {
                        path,
                        detail: format!(
                            "rows have width {}, earlier parts {}",
                            rows.width, acc.width
                        ),
                    })
                }
                None => pending = Some(rows),
            }
            if pending.as_ref().is_some_and(|p| p.len() >= batch_rows) {
                f(&pending.take().unwrap_or_default())?;
            }
        }
        if let Some(rest) = pending.filter(|p| !p.is_empty()) {
            f(&rest)?;
        }
        Ok(())
    }

    /// The steps a site has rows for, read from the `step` column alone.
    pub fn recorded_steps(&self, site: &str) -> Result<std::collections::BTreeSet<u16>> {
        let mut steps = std::collections::BTreeSet::new();
        for path in self.parts(site)? {
            let file = fs::File::open(&path).at(&path)?;
            let df = ParquetReader::new(file)
                .with_columns(Some(vec!["step".into()]))
                .finish()
                .map_err(|e| Error::BadFile {
                    path: path.clone(),
                    detail: format!("no readable `step` column: {e}"),
                })?;
            let col = df.column("step")?.cast(&DataType::UInt16)?;
            steps.extend(col.u16()?.iter().flatten());
        }
        Ok(steps)
    }

    /// All rows of one site (optionally only `steps`), in (sample, step, position) order.
    pub fn read_latents(&self, site: &str, steps: Option<&[u16]>) -> Result<Latents> {
        let mut all: Option<Latents> = None;
        self.scan_latents(site, steps, usize::MAX, &mut |rows| {
            match all.as_mut() {
                Some(acc) => acc.append(rows),
                None => all = Some(rows.clone()),
            }
            Ok(())
        })?;
        let mut all = all.unwrap_or_default();
        all.sort();
        Ok(all)
    }

    /// Whether the run has samples.parquet (a recording finished at least once).
    pub fn has_samples(&self) -> bool {
        self.root.join(SAMPLES).is_file()
    }

    /// samples.parquet: `sample` plus one column per ground-truth label.
    pub fn samples(&self) -> Result<DataFrame> {
        read_parquet(&self.root.join(SAMPLES))
    }

    /// `tables/<name>.parquet`.
    pub fn table(&self, name: &str) -> Result<DataFrame> {
        let path = self.root.join("tables").join(format!("{name}.parquet"));
        if !path.is_file() {
            return Err(Error::BadFile {
                path,
                detail: format!(
                    "no table `{name}` in this run; tables here: {}",
                    self.tables()?.join(", ")
                ),
            });
        }
        read_parquet(&path)
    }

    /// Names of the tables in `tables/`, sorted.
    pub fn tables(&self) -> Result<Vec<String>> {
        let dir = self.root.join("tables");
        if !dir.is_dir() {
            return Ok(Vec::new());
        }
        let mut names: Vec<String> = fs::read_dir(&dir)
            .at(&dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".parquet"))
                    .map(str::to_string)
            })
            .collect();
        names.sort();
        Ok(names)
    }

    /// Writes `tables/<name>.parquet` atomically with the run's provenance.
    pub fn write_table(&self, name: &str, df: &mut DataFrame) -> Result<PathBuf> {
        self.lock()?;
        let path = self.root.join("tables").join(format!("{name}.parquet"));
        write_parquet(&path, df, self.manifest.provenance())?;
        Ok(path)
    }

    /// Writes one table of an analysis with the run's provenance and the analysis's own
    /// (options, seed, version, input run) in its Parquet metadata.
    pub fn write_analysis_table(
        &self,
        name: &str,
        df: &mut DataFrame,
        record: &AnalysisRecord,
    ) -> Result<PathBuf> {
        self.lock()?;
        let path = self.root.join("tables").join(format!("{name}.parquet"));
        let mut meta = self.manifest.provenance();
        meta.extend(record.provenance());
        write_parquet(&path, df, meta)?;
        Ok(path)
    }

    /// Records a finished analysis in the manifest (replacing the entry with its key) and
    /// writes the manifest; call it after every table and plot of the analysis is written,
    /// so an entry always points at whole files.
    pub fn finish_analysis(&mut self, record: AnalysisRecord) -> Result<()> {
        self.lock()?;
        let list = &mut self.manifest.analyses;
        match list.iter_mut().find(|a| a.key == record.key) {
            Some(slot) => *slot = record,
            None => list.push(record),
        }
        self.write_manifest()
    }

    /// Writes `plots/<name>.svg` atomically.
    pub fn write_plot(&self, name: &str, svg: &str) -> Result<PathBuf> {
        self.lock()?;
        let path = self.root.join("plots").join(format!("{name}.svg"));
        write_atomic(&path, |f| f.write_all(svg.as_bytes()))?;
        Ok(path)
    }

    /// Writes a top-level file of the run (e.g. report.html) atomically.
    pub fn write_file(&self, name: &str, bytes: &[u8]) -> Result<PathBuf> {
        self.lock()?;
        let path = self.root.join(name);
        write_atomic(&path, |f| f.write_all(bytes))?;
        Ok(path)
    }

    /// Deletes temporary files an interrupted process left behind.
    fn remove_temporaries(&self) -> Result<()> {
        remove_tmp_in(&self.root)
    }
}

fn remove_tmp_in(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        return Ok(());
    }
    for entry in fs::read_dir(dir).at(dir)? {
        let path = entry.at(dir)?.path();
        if path.is_dir() {
            remove_tmp_in(&path)?;
        } else if path.to_string_lossy().ends_with(TMP_SUFFIX) {
            fs::remove_file(&path).at(&path)?;
        }
    }
    Ok(())
}

/// Every file under `dir` (none when it does not exist).
fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files = Vec::new();
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        if path.is_dir() {
            files.extend(walk_files(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn read_manifest(path: &Path) -> Result<Manifest> {
    let bytes = fs::read(path).at(path)?;
    serde_json::from_slice(&bytes).map_err(|e| Error::BadFile {
        path: path.to_path_buf(),
        detail: format!("not a latentlens manifest: {e}"),
    })
}

/// Writes `path` by writing `<path>.tmp` and renaming it, creating parent folders. On any
/// error the temporary file is removed and `path` is untouched.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut fs::File) -> std::io::Result<()>,
) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).at(parent)?;
    }
    // Built from the OS string: `display()` would mangle a path that is not UTF-8.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(TMP_SUFFIX);
    let tmp = PathBuf::from(tmp);
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        write(&mut file)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Writes a zstd Parquet file atomically with key-value metadata.
///
/// The file is encoded in memory, then written: Parquet's writer reports a failing write
/// (a full disk) as "Invalid thrift: transport error", the plain write names it.
pub fn write_parquet(path: &Path, df: &mut DataFrame, meta: Vec<(String, String)>) -> Result<()> {
    let mut bytes = Vec::new();
    ParquetWriter::new(&mut bytes)
        .with_compression(ParquetCompression::Zstd(None))
        .with_key_value_metadata(Some(KeyValueMetadata::from_static(meta)))
        .finish(df)
        .map_err(|e| Error::BadFile {
            path: path.to_path_buf(),
            detail: format!("could not write Parquet: {e}"),
        })?;
    write_atomic(path, |file| file.write_all(&bytes))
}

/// Reads a whole Parquet file; errors name the file.
pub fn read_parquet(path: &Path) -> Result<DataFrame> {
    let file = fs::File::open(path).at(path)?;
    ParquetReader::new(file)
        .finish()
        .map_err(|e| Error::BadFile {
            path: path.to_path_buf(),
            detail: format!("unreadable Parquet: {e}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(config: serde_json::Value) -> Manifest {
        Manifest::new(
            "test",
            config,
            0,
            ModelInfo {
                id: "none".into(),
                weights: vec![],
            },
        )
    }

    #[test]
    fn rerun_of_the_same_run_resumes_and_another_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("run");
        let (_, start) =
            Run::create_or_resume(&root, manifest(serde_json::json!({"n": 1}))).unwrap();
        assert_eq!(start, Start::New);
        let (_, start) =
            Run::create_or_resume(&root, manifest(serde_json::json!({"n": 1}))).unwrap();
        assert_eq!(start, Start::Resumed);
        let err = Run::create_or_resume(&root, manifest(serde_json::json!({"n": 2}))).unwrap_err();
        assert!(matches!(err, Error::RunExists { .. }), "{err}");
    }

    #[test]
    fn a_failed_start_leaves_nothing_and_a_started_run_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("run");
        let (run, _) = Run::create_or_resume(&root, manifest(serde_json::json!({}))).unwrap();
        assert!(run.abandon_if_empty().unwrap());
        assert!(!root.exists(), "the folder the failed start made is gone");

        let (run, _) = Run::create_or_resume(&root, manifest(serde_json::json!({}))).unwrap();
        let mut rows = Latents::new(1);
        rows.push(0, 0, None, None, &[1.0]);
        run.write_latents_part("latent", 0, &rows).unwrap();
        assert!(!run.abandon_if_empty().unwrap());
        assert!(root.join("manifest.json").is_file());
        assert!(!root.join(LOCK_FILE).exists(), "the lock goes with the run");
    }

    #[test]
    fn a_foreign_non_empty_folder_is_refused_and_untouched() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("thesis.txt"), b"keep me").unwrap();
        let err = Run::create_or_resume(dir.path(), manifest(serde_json::json!({}))).unwrap_err();
        assert!(err.to_string().contains("without manifest.json"), "{err}");
        assert_eq!(
            std::fs::read(dir.path().join("thesis.txt")).unwrap(),
            b"keep me"
        );
        assert!(!dir.path().join("manifest.json").exists());
    }

    #[test]
    fn parts_stream_back_in_order_with_provenance() {
        let dir = tempfile::tempdir().unwrap();
        let (run, _) = Run::create_or_resume(dir.path(), manifest(serde_json::json!({}))).unwrap();
        for part in 0..3u32 {
            let mut rows = Latents::new(2);
            for s in 0..4u32 {
                let sample = part * 4 + s;
                rows.push(sample, 0, Some(10), None, &[sample as f32, 0.5]);
                rows.push(sample, 1, Some(5), None, &[sample as f32, 1.5]);
            }
            run.write_latents_part("latent", part, &rows).unwrap();
        }
        let mut batches = 0;
        run.scan_latents("latent", Some(&[1]), 5, &mut |b| {
            batches += 1;
            assert!(b.step.iter().all(|&s| s == 1));
            Ok(())
        })
        .unwrap();
        assert_eq!(batches, 2);
        let all = run.read_latents("latent", None).unwrap();
        assert_eq!(all.len(), 24);
        assert_eq!(all.row(23), &[11.0, 1.5]);
        assert_eq!(run.sites().unwrap(), vec!["latent".to_string()]);
        let err = run.read_latents("unet.mid_block", None).unwrap_err();
        assert!(err.to_string().contains("latent"), "{err}");
    }

    #[test]
    fn a_full_disk_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.bin");
        let err = write_atomic(&path, |_| Err(std::io::Error::from_raw_os_error(28))).unwrap_err();
        assert!(matches!(err, Error::DiskFull { .. }), "{err}");
        assert!(err.to_string().contains("the disk is full"), "{err}");
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    }

    #[test]
    fn failed_write_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.bin");
        let err = write_atomic(&path, |f| {
            f.write_all(b"half")?;
            Err(std::io::Error::other("disk full"))
        });
        assert!(err.is_err());
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    }
}
