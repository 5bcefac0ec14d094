//! One writer per run folder: an exclusive advisory lock on `<run>/.lock`.
//!
//! Two processes writing one folder would both compute and then race on the same part
//! names, so every writer (record, analyses, `run`, `report`) takes the folder's lock first
//! and a second process is refused at once, naming the holder's pid. The lock is the
//! operating system's (`flock` on Linux, `LockFileEx` on Windows, via `File::try_lock`): it
//! dies with its process, so the `.lock` file a crash leaves behind blocks nobody.
//!
//! Within one process the lock is shared: [`lock_folder`] hands out the same guard to every
//! caller while one is alive (a second `open` of the file would conflict with our own
//! lock). The guard removes `.lock` when the last holder drops it, so a finished folder
//! holds only its results.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use crate::error::{IoContext, Result};
use crate::Error;

/// The lock file's name inside a run folder.
pub const LOCK_FILE: &str = ".lock";

/// A held folder lock; released (and its file removed) when the last clone is dropped.
#[derive(Debug)]
pub struct FolderLock {
    dir: PathBuf,
    path: PathBuf,
    file: File,
}

/// Locks held by this process, by canonical folder path.
static HELD: Mutex<Vec<(PathBuf, Weak<FolderLock>)>> = Mutex::new(Vec::new());

/// Takes the exclusive lock of `dir` (which must exist), or shares the one this process
/// already holds. Another live process holding it is an [`Error::Locked`].
pub fn lock_folder(dir: &Path) -> Result<Arc<FolderLock>> {
    let canonical = fs::canonicalize(dir).at(dir)?;
    let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
    held.retain(|(_, w)| w.strong_count() > 0);
    if let Some(lock) = held
        .iter()
        .find(|(p, _)| *p == canonical)
        .and_then(|(_, w)| w.upgrade())
    {
        return Ok(lock);
    }
    let lock = Arc::new(acquire(&canonical, dir)?);
    held.push((canonical, Arc::downgrade(&lock)));
    Ok(lock)
}

/// Locks `dir` (canonical); errors name the folder as the user gave it (`shown`).
fn acquire(dir: &Path, shown: &Path) -> Result<FolderLock> {
    let path = dir.join(LOCK_FILE);
    // The holder removes the file when it is done; a process that opened the old file
    // just before would then lock an unlinked file. Locking, then checking that the path
    // still names the file we locked, closes that gap.
    loop {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .at(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(Error::Locked {
                    path: shown.to_path_buf(),
                    holder: holder_of(&mut file),
                })
            }
            Err(fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
        if !same_file(&file, &path) {
            continue;
        }
        file.set_len(0).at(&path)?;
        file.seek(SeekFrom::Start(0)).at(&path)?;
        writeln!(file, "{}", std::process::id()).at(&path)?;
        file.flush().at(&path)?;
        return Ok(FolderLock {
            dir: dir.to_path_buf(),
            path,
            file,
        });
    }
}

/// What the holder wrote into the lock file: its pid, when readable.
fn holder_of(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    match text.trim().parse::<u32>() {
        Ok(pid) => format!("pid {pid}"),
        Err(_) => "a process that has not written its pid yet".into(),
    }
}

#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_file: &File, path: &Path) -> bool {
    path.is_file()
}

impl FolderLock {
    /// The folder this lock guards.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for FolderLock {
    fn drop(&mut self) {
        // Remove first, unlock second (closing the file): a waiter that opened the old file
        // sees it unlinked and opens a fresh one.
        let _ = fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_process_shares_its_lock_and_the_file_goes_with_the_last_holder() {
        let dir = tempfile::tempdir().unwrap();
        let a = lock_folder(dir.path()).unwrap();
        let b = lock_folder(dir.path()).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let text = fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
        drop(a);
        assert!(dir.path().join(LOCK_FILE).exists());
        drop(b);
        assert!(!dir.path().join(LOCK_FILE).exists());
    }

    #[test]
    fn a_lock_held_through_another_file_is_refused_with_the_holders_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOCK_FILE);
        // Another holder: a second open file description locks independently, as another
        // process would.
        fs::write(&path, "4242\n").unwrap();
        let other = File::open(&path).unwrap();
        other.lock().unwrap();
        let err = lock_folder(dir.path()).unwrap_err();
        assert!(err.to_string().contains("pid 4242"), "{err}");
        drop(other);
        // A stale file of a dead holder does not block.
        let lock = lock_folder(dir.path()).unwrap();
        drop(lock);
    }
}
